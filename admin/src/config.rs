//! How a console is set up: authentication, tenant scope, read-only mode, page sizes.

use windlass_core::TenantScope;

/// The shortest bearer token accepted (a guessable token is no authentication).
pub const MIN_TOKEN_LEN: usize = 16;
/// The largest page a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;

/// A configuration error, raised by the builder method given the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid console option `{option}`: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The option.
    pub option: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(option: &'static str, reason: impl Into<String>) -> Self {
        Self {
            option,
            reason: reason.into(),
        }
    }
}

/// How requests authenticate with the built-in authentication.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// A shared secret: `Authorization: Bearer <token>` for scripts, or the login form, which
    /// sets an `HttpOnly`, `SameSite=Strict` session cookie, for browsers.
    Token(String),
    /// HTTP basic authentication (the browser asks for the user and password).
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, password: <redacted> }}")
            }
        }
    }
}

/// Whether the session cookie carries the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CookieSecurity {
    /// `Secure` when the request came over HTTPS (its URI scheme, or `X-Forwarded-Proto: https`
    /// from a proxy in front).
    #[default]
    Auto,
    /// Always `Secure` (browsers then send it over HTTPS only).
    Always,
    /// Never (plain HTTP on localhost).
    Never,
}

/// The console's configuration. Start from [`ConsoleConfig::default`] and set authentication
/// with [`ConsoleConfig::token`] or [`ConsoleConfig::basic`], or mount the router with
/// [`Console::router_with_auth_layer`](crate::Console::router_with_auth_layer).
///
/// Without any of them every request is refused with 401: a console is never open by mistake.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsoleConfig {
    /// Built-in authentication.
    pub auth: Option<Auth>,
    /// The tenants this console sees and acts on.
    pub scope: TenantScope,
    /// Refuse every action (pages only).
    pub read_only: bool,
    /// Rows per page when the request does not say.
    pub page_size: u32,
    /// Title shown in the header.
    pub title: String,
    /// `Secure` attribute of the session cookie.
    pub cookie_security: CookieSecurity,
    pub(crate) secret: Option<[u8; 32]>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            auth: None,
            scope: TenantScope::All,
            read_only: false,
            page_size: 50,
            title: "windlass".to_owned(),
            cookie_security: CookieSecurity::Auto,
            secret: None,
        }
    }
}

impl ConsoleConfig {
    /// Bearer-token authentication (at least [`MIN_TOKEN_LEN`] characters).
    pub fn token(mut self, token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ConfigError::new(
                "token",
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if token.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::new(
                "token",
                "must not contain spaces or control characters",
            ));
        }
        self.auth = Some(Auth::Token(token));
        Ok(self)
    }

    /// HTTP basic authentication (user without `:`, password of at least 8 characters).
    pub fn basic(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let (user, password) = (user.into(), password.into());
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "basic user",
                "must be non-empty, without ':' or control characters",
            ));
        }
        if password.chars().count() < 8 {
            return Err(ConfigError::new(
                "basic password",
                "must be at least 8 characters",
            ));
        }
        self.auth = Some(Auth::Basic { user, password });
        Ok(self)
    }

    /// Limits the console to `scope` (e.g. `TenantScope::org(acme)`): it then sees and touches
    /// only that tenant's rows, and refuses actions that would affect other tenants (pausing a
    /// shared queue).
    pub fn scope(mut self, scope: TenantScope) -> Self {
        self.scope = scope;
        self
    }

    /// Read-only mode: pages only, every action refused with 403.
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Default rows per page (`1..=MAX_PAGE_SIZE`).
    pub fn page_size(mut self, rows: u32) -> Result<Self, ConfigError> {
        if !(1..=MAX_PAGE_SIZE).contains(&rows) {
            return Err(ConfigError::new(
                "page_size",
                format!("{rows} is outside 1..={MAX_PAGE_SIZE}"),
            ));
        }
        self.page_size = rows;
        Ok(self)
    }

    /// Header title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// `Secure` attribute of the session cookie (default [`CookieSecurity::Auto`]).
    pub fn cookie_security(mut self, security: CookieSecurity) -> Self {
        self.cookie_security = security;
        self
    }

    /// The key that signs session cookies and CSRF tokens (at least 32 bytes; hashed down to
    /// 32). Default: random per process, so sessions end when the process restarts; set the
    /// same secret on every replica behind one load balancer.
    pub fn secret(mut self, secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < 32 {
            return Err(ConfigError::new("secret", "must be at least 32 bytes"));
        }
        use sha2::Digest as _;
        self.secret = Some(sha2::Sha256::digest(secret).into());
        Ok(self)
    }
}
