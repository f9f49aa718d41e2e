//! Errors of the console's pages, each an HTTP status with a page saying why.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::source::SourceError;

/// What went wrong with a request. Bad input is a 4xx with the reason, never a 500.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    /// 400: malformed or out-of-range input.
    #[error("{0}")]
    BadRequest(String),
    /// 401: not authenticated.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed (CSRF, cross-site, read-only, tenant scope).
    #[error("{0}")]
    Forbidden(String),
    /// 404: unknown page or row (another tenant's rows are unknown too).
    #[error("{0}")]
    NotFound(String),
    /// 405: wrong method.
    #[error("this page only answers GET, and actions only POST")]
    MethodNotAllowed,
    /// 409: the row is not in a state the action applies to.
    #[error("{0}")]
    Conflict(String),
    /// 413: request body too large.
    #[error("{0}")]
    TooLarge(String),
    /// 501: the backing primitive cannot do this yet.
    #[error("{0}")]
    Unsupported(String),
    /// 503: a store or bus failed (details are logged, not shown).
    #[error("a backend call failed ({0}); see the server's log")]
    Unavailable(&'static str),
}

impl ConsoleError {
    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<SourceError> for ConsoleError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::NotFound(m) => Self::NotFound(m),
            SourceError::Invalid(m) => Self::BadRequest(m),
            SourceError::Conflict(m) => Self::Conflict(m),
            SourceError::Forbidden(m) => Self::Forbidden(m),
            SourceError::Unsupported(m) => Self::Unsupported(m),
            SourceError::Backend { what, source } => {
                tracing::error!(what, error = %source, "console backend call failed");
                Self::Unavailable(what)
            }
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        (status, page(status, &self.to_string())).into_response()
    }
}

/// A bare page for an error status and its reason (escaped).
pub(crate) fn page(status: StatusCode, reason: &str) -> Markup {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body {
                h1 { (title) }
                p class="reason" { (reason) }
            }
        }
    }
}
