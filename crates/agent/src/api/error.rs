//! How the API answers errors: a status that says whose fault it is, and a
//! JSON body `{"message": ...}` on every route, including requests axum
//! itself refuses (bad JSON, a bad path or query, a wrong method).

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

impl Error {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status(), Json(serde_json::json!({ "message": self.to_string() }))).into_response()
    }
}

/// An extractor whose rejection is a JSON [`Error::Invalid`] naming the
/// route, instead of axum's plain text.
#[derive(Debug)]
pub struct Checked<E>(pub E);

fn rejected(method: &axum::http::Method, path: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("invalid request to {method} {path}: {e}"))
}

impl<S, E> FromRequestParts<S> for Checked<E>
where
    S: Send + Sync,
    E: FromRequestParts<S>,
    E::Rejection: std::fmt::Display,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        match E::from_request_parts(parts, state).await {
            Ok(e) => Ok(Checked(e)),
            Err(e) => Err(rejected(&parts.method, parts.uri.path(), e)),
        }
    }
}

impl<S, E> FromRequest<S> for Checked<E>
where
    S: Send + Sync,
    E: FromRequest<S>,
    E::Rejection: std::fmt::Display + IntoResponse,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        match E::from_request(req, state).await {
            Ok(e) => Ok(Checked(e)),
            Err(e) => {
                let error = rejected(&method, &path, &e);
                if e.into_response().status() == StatusCode::PAYLOAD_TOO_LARGE {
                    return Err(Error::TooLarge(format!(
                        "{error}: the API takes bodies of up to {} MiB",
                        BODY_LIMIT >> 20
                    )));
                }
                Err(error)
            }
        }
    }
}

/// The largest request body the API reads.
pub const BODY_LIMIT: usize = 2 << 20;
