//! The PodDisruptionBudget: voluntary disruptions take one node at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Inputs, child_meta, selector_labels};

/// `NAME`: at most one node unavailable.
pub fn build_pdb(inputs: &Inputs<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(inputs, inputs.name(), "disruption-budget"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&inputs.name())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn one_node_at_a_time() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let spec = with_inputs(&memory, build_pdb).spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(selector_labels("mem"))
        );
    }
}
