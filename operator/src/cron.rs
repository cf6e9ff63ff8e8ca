//! Calendar maths of the cleanup schedule: which five-field cron schedule runs at a cadence,
//! never closer than `minInterval`, only inside the maintenance windows, and the longest
//! time between two of its runs. Pure; the plan step ([`crate::plan`]) uses it.
//!
//! Written here rather than taken from a crate: croner and cron parse and iterate
//! schedules (the tests use croner to check every schedule made here), but none makes a
//! schedule from a cadence and a set of windows.

use std::time::Duration;

use crate::crd::{MaintenanceWindow, Weekday};

/// The minute of the hour a memory's cleanups start at: spread by a hash of
/// namespace/name so many memories do not all clean at :00.
pub fn spread_minute(namespace: &str, name: &str) -> u32 {
    let hash = blake3::hash(format!("{namespace}/{name}").as_bytes());
    let bytes = hash.as_bytes();
    u32::from(u16::from_le_bytes([bytes[0], bytes[1]])) % 60
}

/// Cron day of the week (0 = Sunday).
fn cron_day(day: Weekday) -> u32 {
    match day {
        Weekday::Sun => 0,
        Weekday::Mon => 1,
        Weekday::Tue => 2,
        Weekday::Wed => 3,
        Weekday::Thu => 4,
        Weekday::Fri => 5,
        Weekday::Sat => 6,
    }
}

/// Every (cron day, hour) some window covers. A window opens on each of its days (every day
/// when it names none) at `startHour` and stays open through `endHour`; one that ends
/// before it starts runs past midnight, so those hours fall on the next day.
fn window_slots(windows: &[MaintenanceWindow]) -> [[bool; 24]; 7] {
    let mut open = [[windows.is_empty(); 24]; 7];
    for window in windows {
        let days: Vec<u32> = if window.days.is_empty() {
            (0..7).collect()
        } else {
            window.days.iter().copied().map(cron_day).collect()
        };
        let start = u32::from(window.start_hour) % 24;
        let end = u32::from(window.end_hour) % 24;
        let length = (end + 24 - start) % 24 + 1;
        for day in days {
            for offset in 0..length {
                let hour = start + offset;
                open[((day + hour / 24) % 7) as usize][(hour % 24) as usize] = true;
            }
        }
    }
    open
}

/// Every way one cron schedule can sit inside the windows: a set of days of the week with
/// every hour open on all of them (one schedule runs at each of its hours on each of its
/// days), most day-hours first. No windows: every hour of every day.
fn window_rectangles(windows: &[MaintenanceWindow]) -> Vec<(Vec<u32>, Vec<u32>)> {
    let open = window_slots(windows);
    let mut rectangles: Vec<(Vec<u32>, Vec<u32>)> = (1u32..(1 << 7))
        .map(|mask| {
            let days: Vec<u32> = (0..7).filter(|d| mask & (1 << d) != 0).collect();
            let hours: Vec<u32> = (0..24)
                .filter(|&h| days.iter().all(|&d| open[d as usize][h as usize]))
                .collect();
            (days, hours)
        })
        .filter(|(_, hours)| !hours.is_empty())
        .collect();
    rectangles
        .sort_by_key(|(days, hours)| std::cmp::Reverse((days.len() * hours.len(), days.len())));
    rectangles
}

/// Minutes of the day at which a schedule with `step` runs on each of its days.
fn day_runs(step: CronStep, minute: u32, hours: &[u32]) -> Vec<u32> {
    let all_hours = hours.len() == 24;
    match step {
        CronStep::Minutes(n) => hours
            .iter()
            .flat_map(|h| {
                ((minute % n)..60)
                    .step_by(n as usize)
                    .map(move |m| h * 60 + m)
            })
            .collect(),
        CronStep::Hours(n) if all_hours => (0..24)
            .step_by(n as usize)
            .map(|h| h * 60 + minute)
            .collect(),
        CronStep::Hours(n) => spaced(hours, n, 24)
            .iter()
            .map(|h| h * 60 + minute)
            .collect(),
        CronStep::Days(_) => {
            let hour = if all_hours {
                3
            } else {
                hours.first().copied().unwrap_or(3)
            };
            vec![hour * 60 + minute]
        }
    }
}

/// The days of the week a schedule with `step` runs on, from the days it may use.
fn run_days(step: CronStep, days: &[u32]) -> Vec<u32> {
    match step {
        CronStep::Days(n) => spaced(days, n, 7),
        _ => days.to_vec(),
    }
}

/// The longest time between two runs of a schedule that runs at `day_runs` minutes on each
/// of `days`, over a repeating week.
fn longest_gap(day_runs: &[u32], days: &[u32]) -> Duration {
    const WEEK: u32 = 7 * 24 * 60;
    let mut runs: Vec<u32> = days
        .iter()
        .flat_map(|d| day_runs.iter().map(move |m| d * 24 * 60 + m))
        .collect();
    runs.sort_unstable();
    let gap = match (runs.first(), runs.last()) {
        (Some(first), Some(last)) => runs
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain(std::iter::once(first + WEEK - last))
            .max()
            .unwrap_or(WEEK),
        _ => WEEK,
    };
    Duration::from_secs(u64::from(gap) * 60)
}

/// A schedule and the longest time between two of its runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The five-field cron schedule.
    pub schedule: String,
    /// The longest time between two consecutive runs (over a repeating week).
    pub longest_gap: Duration,
    /// No schedule inside the windows keeps runs within the bound asked for.
    pub windows_stretch: bool,
}

fn list(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A repetition a five-field cron schedule expresses evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CronStep {
    /// Every N minutes, N a divisor of 60.
    Minutes(u32),
    /// Every N hours, N a divisor of 24.
    Hours(u32),
    /// Once a day on days of the week at least N days apart: 1 (daily), 2 (Sun, Tue, Thu),
    /// 3 (Sun, Wed) or 7 (weekly).
    Days(u32),
}

impl CronStep {
    /// Every step cron repeats evenly, shortest first.
    const ALL: [CronStep; 22] = [
        CronStep::Minutes(1),
        CronStep::Minutes(2),
        CronStep::Minutes(3),
        CronStep::Minutes(4),
        CronStep::Minutes(5),
        CronStep::Minutes(6),
        CronStep::Minutes(10),
        CronStep::Minutes(12),
        CronStep::Minutes(15),
        CronStep::Minutes(20),
        CronStep::Minutes(30),
        CronStep::Hours(1),
        CronStep::Hours(2),
        CronStep::Hours(3),
        CronStep::Hours(4),
        CronStep::Hours(6),
        CronStep::Hours(8),
        CronStep::Hours(12),
        CronStep::Days(1),
        CronStep::Days(2),
        CronStep::Days(3),
        CronStep::Days(7),
    ];

    /// The shortest time between two runs.
    pub fn shortest(self) -> Duration {
        Duration::from_secs(match self {
            CronStep::Minutes(n) => u64::from(n) * 60,
            CronStep::Hours(n) => u64::from(n) * 3600,
            CronStep::Days(n) => u64::from(n) * 86_400,
        })
    }

    /// The longest time between two runs without windows: a week of 7 days does not split
    /// evenly in 2 or 3, so those steps have one longer gap (Thu → Sun, Wed → Sun).
    pub fn longest(self) -> Duration {
        match self {
            CronStep::Days(2) => Duration::from_secs(3 * 86_400),
            CronStep::Days(3) => Duration::from_secs(4 * 86_400),
            step => step.shortest(),
        }
    }
}

/// The longest `maxInterval` a schedule honours: cron repeats evenly at most weekly.
pub const LONGEST_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// The step a schedule for `interval` runs at: the longest step whose runs are never more
/// than `interval` apart, among those never closer than `floor` (`minInterval`, the limit
/// that protects nodes from cleaning too often). When no step fits both, `floor` wins: the
/// shortest step at or above it.
pub fn cron_step(interval: Duration, floor: Duration) -> CronStep {
    let mut allowed = CronStep::ALL
        .into_iter()
        .filter(|step| step.shortest() >= floor);
    let first = allowed.clone().next().unwrap_or(CronStep::Days(7));
    allowed
        .rfind(|step| step.longest() <= interval)
        .unwrap_or(first)
}

/// From `values` (sorted, each below `modulus`), the first and then every next one at least
/// `step` after the last picked, dropping the last picked while it is closer than `step` to
/// the first one's repetition `modulus` later: consecutive picks, the wrap included, are at
/// least `step` apart.
fn spaced(values: &[u32], step: u32, modulus: u32) -> Vec<u32> {
    let mut picked: Vec<u32> = Vec::new();
    for &value in values {
        if picked.last().is_none_or(|last| value - last >= step) {
            picked.push(value);
        }
    }
    while picked.len() > 1
        && picked
            .last()
            .zip(picked.first())
            .is_some_and(|(last, first)| first + modulus - last < step)
    {
        picked.pop();
    }
    picked
}

/// A five-field cron schedule that runs every `step`, at `minute` past the hour, only inside
/// `windows`. Two runs are never closer than `step.shortest()`. Of the ways one schedule
/// fits the windows, the largest whose runs are never more than `bound` apart (the decided
/// cadence, at least the step's own longest gap) is used; when none is, the one with the
/// shortest longest gap, and `windows_stretch` says so.
pub fn plan_schedule(
    step: CronStep,
    minute: u32,
    windows: &[MaintenanceWindow],
    bound: Duration,
) -> Planned {
    let minute = minute % 60;
    let bound = bound.max(step.longest());
    // Largest first: the first within the bound is the answer (without windows, at once).
    let mut closest: Option<(Vec<u32>, Vec<u32>, Duration)> = None;
    let mut within = None;
    for (days, hours) in window_rectangles(windows) {
        let gap = longest_gap(&day_runs(step, minute, &hours), &run_days(step, &days));
        if gap <= bound {
            within = Some((days, hours, gap));
            break;
        }
        if closest.as_ref().is_none_or(|(_, _, best)| gap < *best) {
            closest = Some((days, hours, gap));
        }
    }
    let stretched = within.is_none();
    let (days, hours, gap) = within
        .or(closest)
        .unwrap_or_else(|| ((0..7).collect(), (0..24).collect(), step.longest()));
    let all_hours = hours.len() == 24;
    let all_days = days.len() == 7;
    let dow = if all_days {
        "*".to_string()
    } else {
        list(&days)
    };
    let schedule = match step {
        CronStep::Minutes(n) => {
            // n divides 60, so runs continue evenly from one hour into the next.
            let offset = minute % n;
            let hour_field = if all_hours { "*".into() } else { list(&hours) };
            format!("{offset}-59/{n} {hour_field} * * {dow}")
        }
        // n divides 24, so runs continue evenly from one day into the next.
        CronStep::Hours(n) if all_hours => format!("{minute} */{n} * * {dow}"),
        CronStep::Hours(n) => format!("{minute} {} * * {dow}", list(&spaced(&hours, n, 24))),
        CronStep::Days(_) => {
            // Once a day, at the first window hour (03:00 without windows).
            let hour = if all_hours {
                3
            } else {
                hours.first().copied().unwrap_or(3)
            };
            let picked = run_days(step, &days);
            let dow = if picked.len() == 7 {
                "*".to_string()
            } else {
                list(&picked)
            };
            format!("{minute} {hour} * * {dow}")
        }
    };
    Planned {
        schedule,
        longest_gap: gap,
        windows_stretch: stretched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule for a cadence of `seconds` with no `minInterval`.
    fn every(seconds: u64, minute: u32, windows: &[MaintenanceWindow]) -> String {
        plan_schedule(
            cron_step(Duration::from_secs(seconds), Duration::ZERO),
            minute,
            windows,
            Duration::from_secs(seconds),
        )
        .schedule
    }

    #[test]
    fn schedules_cover_minutes_hours_and_days() {
        assert_eq!(every(15 * 60, 7, &[]), "7-59/15 * * * *");
        // Rounded down to a step cron repeats evenly: runs never further apart than decided.
        assert_eq!(every(7 * 60, 7, &[]), "1-59/6 * * * *");
        assert_eq!(every(6 * 3600, 42, &[]), "42 */6 * * *");
        assert_eq!(every(5 * 3600, 42, &[]), "42 */4 * * *");
        assert_eq!(every(86_400, 5, &[]), "5 3 * * *");
        assert_eq!(every(2 * 86_400, 5, &[]), "5 3 * * *");
        assert_eq!(every(3 * 86_400, 5, &[]), "5 3 * * 0,2,4");
        assert_eq!(every(5 * 86_400, 5, &[]), "5 3 * * 0,3");
        assert_eq!(every(7 * 86_400, 5, &[]), "5 3 * * 0");
        assert_eq!(every(30 * 86_400, 5, &[]), "5 3 * * 0");
    }

    #[test]
    fn min_interval_wins_over_rounding_down() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        // 7 min has no even step; 6 would break a 7 min minInterval, so 10.
        assert_eq!(cron_step(minutes(7), minutes(7)), CronStep::Minutes(10));
        assert_eq!(cron_step(minutes(7), minutes(5)), CronStep::Minutes(6));
        assert_eq!(cron_step(minutes(90), minutes(61)), CronStep::Hours(2));
        assert_eq!(cron_step(minutes(90), minutes(60)), CronStep::Hours(1));
        assert_eq!(
            cron_step(
                Duration::from_secs(2 * 86_400),
                Duration::from_secs(36 * 3600)
            ),
            CronStep::Days(2)
        );
        // Weekly is the rarest even repetition.
        assert_eq!(
            cron_step(
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(20 * 86_400)
            ),
            CronStep::Days(7)
        );
    }

    fn window(days: &[Weekday], start_hour: u8, end_hour: u8) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.to_vec(),
            start_hour,
            end_hour,
        }
    }

    #[test]
    fn windows_restrict_hours_and_days() {
        // Mon and Tue 22:00–01:59: open Mon 22–23, Tue 0–1 and 22–23, Wed 0–1. One schedule
        // runs at each of its hours on each of its days: the largest such part is Mon and
        // Tue at 22–23 (Mon at 00:00 is not in a window).
        let nights = [window(&[Weekday::Mon, Weekday::Tue], 22, 1)];
        assert_eq!(every(900, 7, &nights), "7-59/15 22,23 * * 1,2");
        assert_eq!(every(2 * 3600, 7, &nights), "7 22 * * 1,2");
        assert_eq!(every(86_400, 7, &nights), "7 22 * * 1,2");
        // Mon and Tue are a day apart: every two days keeps Mon only.
        assert_eq!(every(3 * 86_400, 7, &nights), "7 22 * * 1");
        // Every night: every hour of the window, midnight included.
        let nightly = [window(&[], 22, 1)];
        assert_eq!(every(3600, 7, &nightly), "7 0,1,22,23 * * *");
        // 0 and 23 are an hour apart across midnight: 23 is dropped.
        assert_eq!(every(3 * 3600, 7, &nightly), "7 0 * * *");
        let weekdays = [window(
            &[
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            2,
            4,
        )];
        // Every two to three days among Mon–Fri: Mon, Wed, Fri.
        assert_eq!(every(3 * 86_400, 30, &weekdays), "30 2 * * 1,3,5");
        // Every day at 1–2, and Sunday at 5 too: 5:00 on other days is outside, so the
        // schedule keeps 1–2 every day.
        let any_day = [window(&[], 1, 2), window(&[Weekday::Sun], 5, 5)];
        assert_eq!(every(3600, 0, &any_day), "0 1,2 * * *");
    }

    fn arb_windows() -> impl proptest::strategy::Strategy<Value = Vec<MaintenanceWindow>> {
        use proptest::prelude::*;
        let day = prop_oneof![
            Just(Weekday::Mon),
            Just(Weekday::Tue),
            Just(Weekday::Wed),
            Just(Weekday::Thu),
            Just(Weekday::Fri),
            Just(Weekday::Sat),
            Just(Weekday::Sun),
        ];
        proptest::collection::vec(
            (proptest::collection::vec(day, 0..4), 0u8..24, 0u8..24).prop_map(
                |(days, start_hour, end_hour)| MaintenanceWindow {
                    days,
                    start_hour,
                    end_hour,
                },
            ),
            0..3,
        )
    }

    /// The runs of `schedule` (UTC) over `days` days from `start` (Unix seconds), at most
    /// 3,000.
    fn runs(schedule: &str, start: i64, days: i64) -> Vec<jiff::Zoned> {
        let cron: croner::Cron = schedule.parse().expect("schedule parses");
        let start = jiff::Timestamp::from_second(start)
            .expect("start")
            .to_zoned(jiff::tz::TimeZone::UTC);
        let end = start.timestamp().as_second() + days * 86_400;
        cron.iter_after(start)
            .take_while(|run| run.timestamp().as_second() <= end)
            .take(3000)
            .collect()
    }

    /// The gaps between consecutive runs of `schedule` over five weeks from `start`.
    fn gaps(schedule: &str, start: i64) -> Vec<u64> {
        let runs: Vec<i64> = runs(schedule, start, 35)
            .iter()
            .map(|run| run.timestamp().as_second())
            .collect();
        runs.windows(2)
            .map(|pair| u64::try_from(pair[1] - pair[0]).expect("runs ascend"))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn every_schedule_parses_as_cron(seconds in 60u64..10_000_000, minute in 0u32..60, windows in arb_windows()) {
            let schedule = every(seconds, minute, &windows);
            let parsed: Result<croner::Cron, _> = schedule.parse();
            proptest::prop_assert!(parsed.is_ok(), "{schedule}: {parsed:?}");
            proptest::prop_assert_eq!(schedule.split_whitespace().count(), 5);
        }

        /// Every run croner computes over two weeks falls on an hour of a day some window
        /// covers.
        #[test]
        fn scheduled_runs_fall_inside_the_windows(
            seconds in 60u64..1_000_000,
            minute in 0u32..60,
            windows in arb_windows(),
            start in 1_700_000_000i64..1_900_000_000,
        ) {
            let schedule = every(seconds, minute, &windows);
            let open = window_slots(&windows);
            let runs = runs(&schedule, start, 14);
            proptest::prop_assert!(!runs.is_empty(), "{schedule}: no run in two weeks");
            for run in runs {
                let day = run.weekday().to_sunday_zero_offset();
                let hour = run.hour();
                proptest::prop_assert!(
                    open[day as usize][hour as usize],
                    "{schedule}: runs at {run} (day {day}, hour {hour}), outside {windows:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]

        /// The runs themselves, as croner computes them: never closer than `minInterval`;
        /// without windows, never further apart than the decided cadence unless
        /// `minInterval` leaves no step that short.
        #[test]
        fn runs_are_never_closer_than_min_interval(
            floor in proptest::prop_oneof![60u64..3600, 3600u64..86_400, 86_400u64..=7 * 86_400],
            extra in proptest::prop_oneof![0u64..3600, 3600u64..86_400, 86_400u64..7 * 86_400],
            minute in 0u32..60,
            windows in arb_windows(),
            start in 1_700_000_000i64..1_900_000_000,
        ) {
            let interval = (floor + extra).min(7 * 86_400);
            let step = cron_step(Duration::from_secs(interval), Duration::from_secs(floor));
            proptest::prop_assert!(step.shortest().as_secs() >= floor, "{step:?} for floor {floor}");
            let planned = plan_schedule(step, minute, &windows, Duration::from_secs(interval));
            let schedule = planned.schedule.clone();
            let gaps = gaps(&schedule, start);
            proptest::prop_assert!(!gaps.is_empty(), "{schedule}: fewer than two runs in five weeks");
            for gap in &gaps {
                proptest::prop_assert!(*gap >= floor, "{schedule}: runs {gap} s apart, minInterval {floor} s");
            }
            // What status.plan.runsEverySeconds says is what the runs do.
            let longest = gaps.iter().copied().max().unwrap_or(0);
            proptest::prop_assert_eq!(longest, planned.longest_gap.as_secs(), "{}", schedule);
            // With windows too: the cadence (or the step's own longest gap) is kept whenever
            // some schedule inside the windows can keep it.
            if !planned.windows_stretch {
                let bound = interval.max(step.longest().as_secs());
                proptest::prop_assert!(longest <= bound, "{schedule}: runs {longest} s apart, bound {bound} s, windows {windows:?}");
            }
            if windows.is_empty() {
                let longest = gaps.iter().copied().max().unwrap_or(0);
                proptest::prop_assert_eq!(longest, step.longest().as_secs(), "{}", schedule);
                let shortest_allowed = cron_step(Duration::ZERO, Duration::from_secs(floor));
                proptest::prop_assert!(
                    longest <= interval || step == shortest_allowed,
                    "{schedule}: runs {longest} s apart, cadence {interval} s"
                );
            }
        }
    }

    /// examples/production.yaml's windows (Mon–Fri 1–5, Sat–Sun all day) with maxInterval
    /// 24h: the weekend-only schedule had a six-day gap; now one run a day in 1–5.
    #[test]
    fn windows_keep_the_cadence_when_a_schedule_inside_them_can() {
        let windows: Vec<MaintenanceWindow> = serde_json::from_value(serde_json::json!([
            {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "startHour": 1, "endHour": 5},
            {"days": ["Sat", "Sun"], "startHour": 0, "endHour": 23}
        ]))
        .expect("windows");
        let daily = plan_schedule(CronStep::Days(1), 23, &windows, Duration::from_secs(86_400));
        assert_eq!(daily.schedule, "23 1 * * *");
        assert_eq!(daily.longest_gap, Duration::from_secs(86_400));
        assert!(!daily.windows_stretch);
        let half_hourly = plan_schedule(
            CronStep::Minutes(30),
            23,
            &windows,
            Duration::from_secs(1800),
        );
        assert!(half_hourly.windows_stretch, "{half_hourly:?}");
        // Only Saturday and Sunday can run every hour: the longest gap is said.
        let one_window = [MaintenanceWindow {
            days: vec![Weekday::Sat],
            start_hour: 2,
            end_hour: 3,
        }];
        let weekly = plan_schedule(
            CronStep::Days(1),
            0,
            &one_window,
            Duration::from_secs(86_400),
        );
        assert!(weekly.windows_stretch);
        assert_eq!(weekly.longest_gap, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn minutes_spread_across_the_hour() {
        let minutes: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| spread_minute("ns", &format!("memory-{i}")))
            .collect();
        assert!(
            minutes.len() > 40,
            "only {} distinct minutes",
            minutes.len()
        );
        assert_eq!(spread_minute("a", "b"), spread_minute("a", "b"));
    }
}
