//! The API's errors: an HTTP status and a JSON body that names the rule broken and, where
//! there is one, the service: `{"error": {"code": "running", "service": "echo", "message":
//! "child `echo` is running"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use troupe_core::services::ChannelError;
use troupe_supervisor::ChildError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    #[serde(skip)]
    pub status: u16,
    /// A stable, snake_case name of the rule broken.
    pub code: &'static str,
    /// The service concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A sentence for people.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            service: None,
            message: message.into(),
        }
    }

    /// The same error, naming `service`.
    pub fn for_service(mut self, service: &str) -> Self {
        self.service = Some(service.to_string());
        self
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 404 for a role this node does not run.
    pub fn role_not_running(role: &str) -> Self {
        Self::new(
            404,
            "role_not_running",
            format!("this node does not run the {role} role"),
        )
    }

    /// 503 for a role whose actor did not answer.
    pub fn unavailable(role: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            503,
            "role_unavailable",
            format!("the {role} role did not answer: {why}"),
        )
    }
}

impl From<ChildError> for ApiError {
    fn from(err: ChildError) -> Self {
        let status = match err {
            ChildError::NotFound(_) => 404,
            ChildError::Invalid(_) => 400,
            ChildError::Stopping => 503,
            _ => 409,
        };
        let service = err.child().map(str::to_string);
        ApiError {
            status,
            code: err.rule(),
            service,
            message: err.to_string(),
        }
    }
}

impl From<ChannelError> for ApiError {
    fn from(err: ChannelError) -> Self {
        let (status, code) = match err {
            ChannelError::NotAlive => (409, "channel_not_alive"),
            ChannelError::Timeout(_) => (504, "timeout"),
            ChannelError::ServiceExited => (502, "service_exited"),
            ChannelError::ChannelClosed => (502, "channel_closed"),
            ChannelError::Refused(_) => (422, "refused"),
            ChannelError::Failed(_) => (500, "failed"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a ApiError,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.status == 401 {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(Body { error: self })
    }
}
