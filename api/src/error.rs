//! API errors and their gRPC codes (DESIGN.md rule 7). Messages read like Kubernetes':
//! `pods "web" not found`, `Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: …`.

use skiff_raft_store::StoreError;
use std::fmt;
use tonic::{Code, Status};

/// One invalid field, named by its path (`spec.template.spec.containers[1].name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid(String),
    Duplicate(String),
    NotSupported(String),
    Forbidden,
    /// A list longer than allowed: its length.
    TooMany(usize),
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FieldErrorKind::Required => write!(f, "{}: Required value", self.path)?,
            FieldErrorKind::Invalid(v) => write!(f, "{}: Invalid value: {v}", self.path)?,
            FieldErrorKind::Duplicate(v) => write!(f, "{}: Duplicate value: {v}", self.path)?,
            FieldErrorKind::NotSupported(v) => write!(f, "{}: Unsupported value: {v}", self.path)?,
            FieldErrorKind::Forbidden => write!(f, "{}: Forbidden", self.path)?,
            FieldErrorKind::TooMany(n) => write!(f, "{}: Too many: {n}", self.path)?,
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// A value as Kubernetes shows it in a field error: `30999`, `"10.96.0.1"` — a JSON value's
/// Debug form (`Number(30999)`, `String("…")`, `Bool(true)`) without its wrapper.
fn shown(value: &impl fmt::Debug) -> String {
    let debug = format!("{value:?}");
    for wrapper in ["Number(", "String(", "Bool("] {
        if let Some(inner) = debug.strip_prefix(wrapper).and_then(|d| d.strip_suffix(')')) {
            return inner.to_string();
        }
    }
    debug
}

impl FieldError {
    pub fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { path: path.into(), kind: FieldErrorKind::Required, detail: detail.into() }
    }
    pub fn invalid(path: impl Into<String>, value: impl fmt::Debug, detail: impl Into<String>) -> Self {
        FieldError { path: path.into(), kind: FieldErrorKind::Invalid(shown(&value)), detail: detail.into() }
    }
    pub fn duplicate(path: impl Into<String>, value: impl fmt::Debug) -> Self {
        FieldError { path: path.into(), kind: FieldErrorKind::Duplicate(shown(&value)), detail: String::new() }
    }
    pub fn not_supported(path: impl Into<String>, value: impl fmt::Debug, supported: &[&str]) -> Self {
        let detail =
            format!("supported values: {}", supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
        FieldError { path: path.into(), kind: FieldErrorKind::NotSupported(format!("{value:?}")), detail }
    }
    /// `spec.tags: Too many: 3: must have at most 2 items`.
    pub fn too_many(path: impl Into<String>, length: usize, max: u64) -> Self {
        FieldError {
            path: path.into(),
            kind: FieldErrorKind::TooMany(length),
            detail: format!("must have at most {max} items"),
        }
    }
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { path: path.into(), kind: FieldErrorKind::Forbidden, detail: detail.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, name: String },
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your \
         changes to the latest version and try again (resourceVersion {given}, current {current})"
    )]
    Conflict { resource: String, name: String, given: String, current: String },
    /// A server-side apply that would change fields other managers own.
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<(String, String)> },
    /// A pod already bound to a node.
    #[error("Operation cannot be fulfilled on pods/binding: {0}")]
    BindConflict(String),
    #[error("{kind} {name:?} is invalid: {}", .causes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "))]
    Invalid { kind: String, name: String, causes: Vec<FieldError> },
    /// Malformed input: bad JSON/YAML, an unknown field or kind, a bad selector.
    #[error("{0}")]
    BadRequest(String),
    #[error("unable to create new content in namespace {0} because it is being terminated")]
    NamespaceTerminating(String),
    /// The requested resourceVersion is older than the store keeps: list again.
    #[error("too old resource version: {requested} (compacted at {compacted})")]
    Gone { requested: i64, compacted: i64 },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    QuotaExceeded(String),
    /// Refused for now, to be retried (an eviction a disruption budget does not allow yet):
    /// Kubernetes' 429, its message and `(reason, message)` causes.
    #[error("{message} {}", .causes.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; "))]
    TooManyRequests { message: String, causes: Vec<(String, String)> },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unsupported(String),
    /// A REST path that names nothing Skiff serves.
    #[error("the server could not find the requested resource")]
    NotFoundPath(String),
    /// A request body in a format the server does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A delete's precondition (uid) that the object does not meet.
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match &e {
            ApiError::NotFound { .. } | ApiError::NotFoundPath(_) => Code::NotFound,
            ApiError::UnsupportedMediaType(_) => Code::InvalidArgument,
            ApiError::Precondition(_) => Code::Aborted,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict { .. } | ApiError::BindConflict(_) | ApiError::ApplyConflict { .. } => Code::Aborted,
            ApiError::Invalid { .. } | ApiError::BadRequest(_) => Code::InvalidArgument,
            ApiError::NamespaceTerminating(_) => Code::FailedPrecondition,
            ApiError::Gone { .. } => Code::OutOfRange,
            ApiError::TooLarge(_) | ApiError::QuotaExceeded(_) | ApiError::TooManyRequests { .. } => {
                Code::ResourceExhausted
            }
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Forbidden(_) => Code::PermissionDenied,
            ApiError::Unsupported(_) => Code::Unimplemented,
            ApiError::Store(s) => return Status::from(s.clone()),
            ApiError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
