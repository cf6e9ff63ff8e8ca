//! The one place errors become HTTP responses: `{ "error": { "code", "message" } }`.
//! 5xx are logged with their cause; the body never carries internals or the token.

use phoenix_node_api::wire::{ErrorBody, ErrorDetail};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::{FlushError, StoreError};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing under that key.
    #[error("no memory under that key")]
    NotFound,
    /// No such route.
    #[error("no route {0}")]
    NoRoute(String),
    /// The route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A malformed parameter, body or token.
    #[error("{message}")]
    BadRequest {
        /// Stable machine-readable code.
        code: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The body is larger than `limits.maxBodyBytes`.
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// No or wrong bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// Admin endpoints are off (no token file configured).
    #[error("admin endpoints are disabled: the node has no adminTokenFile")]
    AdminDisabled,
    /// `PUT /v1/admin/faults` on a node without `faultInjection`.
    #[error("fault injection is disabled on this node")]
    FaultInjectionDisabled,
    /// A cleanup is already running.
    #[error("a cleanup is already running")]
    CleanupRunning,
    /// The request took longer than `limits.requestTimeoutMs`.
    #[error("the request timed out")]
    Timeout,
    /// The node is shutting down or still opening.
    #[error("the node is not ready")]
    NotReady,
    /// `/healthz`: the node cannot make writes durable.
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    /// `/readyz`: the node should get no traffic, and why.
    #[error("not ready: {0}")]
    Unready(String),
    /// Replication cannot serve this now: no leader, no quorum, or an outcome not known in
    /// time. 503 with `Retry-After`: retry, on this node or another.
    #[error("{0}")]
    Unavailable(String),
    /// A membership change this node cannot make or a peer it does not know.
    #[error("{0}")]
    Membership(String),
    /// Anything else (a task panicked, a response could not be built).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 with a code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// Status, code and whether the message may be shown to the client.
    fn parts(&self) -> (StatusCode, &'static str, Option<Duration>) {
        use StoreError as S;
        match self {
            ApiError::Store(S::EmptyKey | S::KeyTooLong { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_key", None)
            }
            ApiError::Store(S::EmptyValue) => (StatusCode::BAD_REQUEST, "invalid_value", None),
            ApiError::Store(S::ValueTooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", None)
            }
            ApiError::Store(S::InvalidTtl { .. }) => (StatusCode::BAD_REQUEST, "invalid_ttl", None),
            ApiError::Store(S::Busy { retry_after }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy", Some(*retry_after))
            }
            ApiError::Store(S::InsufficientSpace { .. }) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                Some(Duration::from_secs(30)),
            ),
            ApiError::Store(S::NoSpace(_)) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                Some(Duration::from_secs(5)),
            ),
            ApiError::Store(S::NotDurable(FlushError::Failed { no_space: true, .. })) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "not_durable",
                Some(Duration::from_secs(10)),
            ),
            ApiError::Store(S::NotDurable(FlushError::Failed { .. })) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_durable",
                Some(Duration::from_secs(10)),
            ),
            ApiError::Store(S::NotDurable(FlushError::Stalled(_))) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "flush_stalled",
                Some(Duration::from_secs(1)),
            ),
            ApiError::Store(S::Corrupt(_) | S::Io { .. } | S::Engine(_))
            | ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::NoRoute(_) => (StatusCode::NOT_FOUND, "no_route", None),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code, None),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled", None),
            ApiError::FaultInjectionDisabled => {
                (StatusCode::FORBIDDEN, "fault_injection_disabled", None)
            }
            ApiError::CleanupRunning => (StatusCode::CONFLICT, "cleanup_running", None),
            ApiError::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                Some(Duration::from_secs(1)),
            ),
            ApiError::NotReady | ApiError::Unready(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                Some(Duration::from_secs(1)),
            ),
            ApiError::Unhealthy(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy", None),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                Some(Duration::from_secs(1)),
            ),
            ApiError::Membership(_) => (StatusCode::CONFLICT, "membership", None),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.parts();
        let message = if status.is_server_error()
            && !matches!(
                self,
                ApiError::Store(StoreError::Busy { .. })
                    | ApiError::Timeout
                    | ApiError::NotReady
                    | ApiError::Unready(_)
                    | ApiError::Unhealthy(_)
                    | ApiError::Unavailable(_)
                    | ApiError::Store(
                        StoreError::InsufficientSpace { .. }
                            | StoreError::NoSpace(_)
                            | StoreError::NotDurable(_)
                    )
            ) {
            tracing::error!(error = %self, "request failed");
            "internal error; see the node's log".to_string()
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(after) = retry_after {
            let seconds = after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
