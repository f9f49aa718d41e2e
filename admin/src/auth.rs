//! Authentication, CSRF protection and read-only mode: one middleware in front of every page.
//!
//! - Who: a bearer token (header, or the login form's session cookie), HTTP basic, or the
//!   user's own tower layer (then every request that reaches the console is trusted).
//! - CSRF: every state-changing request is a POST carrying a `csrf` form field, an HMAC of the
//!   session under the console's secret key; requests a browser sends with ambient credentials
//!   (cookie, basic) are also refused when `Sec-Fetch-Site` or `Origin` says they come from
//!   another site. Requests authenticated by an `Authorization: Bearer` header need no token
//!   (browsers never attach that header on their own).
//! - The session cookie is `HttpOnly; SameSite=Strict`, scoped to the console's path.

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Auth, CookieSecurity};
use crate::error::ConsoleError;
use crate::pages::{Ctx, login_page};
use crate::{Inner, Shared};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "windlass_console";
/// Largest form body accepted.
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;

/// How the request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `Authorization: Bearer`: not sent by browsers on their own, no CSRF token needed.
    BearerHeader,
    /// Cookie or basic: attached by browsers to any request, so CSRF-checked.
    Ambient,
    /// The user's tower layer authenticated it (could be a cookie: CSRF-checked).
    Layer,
}

impl Inner {
    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac
    }

    fn sign(&self, parts: &[&[u8]]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    /// Constant-time check of `given` (hex) against the signature of `parts`.
    fn verify(&self, parts: &[&[u8]], given: &str) -> bool {
        match hex::decode(given) {
            Ok(bytes) => self.mac(parts).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// Constant-time equality of two secrets (compared through their MACs).
    fn secret_eq(&self, given: &str, expected: &str) -> bool {
        let tag = self.sign(&[b"cmp", expected.as_bytes()]);
        self.verify(&[b"cmp", given.as_bytes()], &tag)
    }

    pub(crate) fn session_value(&self, token: &str) -> String {
        self.sign(&[b"session", token.as_bytes()])
    }

    fn csrf_for(&self, principal: &str) -> String {
        self.sign(&[b"csrf", principal.as_bytes()])
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The principal (a stable string naming the session) and how it authenticated.
fn authenticate(inner: &Inner, headers: &HeaderMap, layer: bool) -> Option<(String, Via)> {
    if layer {
        return Some(("layer".to_owned(), Via::Layer));
    }
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match inner.config.auth.as_ref()? {
        Auth::Token(token) => {
            if let Some(given) = authz.and_then(|a| a.strip_prefix("Bearer ")) {
                return inner
                    .secret_eq(given.trim(), token)
                    .then(|| ("bearer".to_owned(), Via::BearerHeader));
            }
            let session = cookie(headers, COOKIE)?;
            inner
                .verify(&[b"session", token.as_bytes()], &session)
                .then(|| (format!("session:{session}"), Via::Ambient))
        }
        Auth::Basic { user, password } => {
            let b64 = authz?.strip_prefix("Basic ")?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?;
            let raw = String::from_utf8(raw).ok()?;
            let (u, p) = raw.split_once(':')?;
            // Both compared, whatever the first says, so timing tells nothing.
            let ok = inner.secret_eq(u, user) & inner.secret_eq(p, password);
            ok.then(|| (format!("basic:{u}"), Via::Ambient))
        }
    }
}

/// True when the browser says the request comes from another site (or origin).
fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some(format!("Sec-Fetch-Site: {site}"));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .or_else(|| headers.get(header::REFERER).and_then(|v| v.to_str().ok()));
    match (origin, host) {
        (Some("null"), _) => Some("Origin: null".to_owned()),
        (Some(origin), Some(host)) => {
            let authority = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default();
            (!authority.eq_ignore_ascii_case(host)).then(|| format!("Origin: {origin}"))
        }
        _ => None,
    }
}

/// The path prefix the router is mounted under (`""` at the root).
fn base_path(req: &Request) -> String {
    let inner_path = req.uri().path();
    let full = req
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.path().to_owned())
        .unwrap_or_else(|| inner_path.to_owned());
    let base = if inner_path == "/" {
        full.as_str()
    } else {
        full.strip_suffix(inner_path).unwrap_or("")
    };
    base.trim_end_matches('/').to_owned()
}

fn secure(inner: &Inner, req: &Request) -> bool {
    match inner.config.cookie_security {
        CookieSecurity::Always => true,
        CookieSecurity::Never => false,
        CookieSecurity::Auto => {
            req.uri().scheme_str() == Some("https")
                || req
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.eq_ignore_ascii_case("https"))
        }
    }
}

fn unauthorized(inner: &Inner, base: &str, message: Option<&str>) -> Response {
    match inner.config.auth {
        Some(Auth::Basic { .. }) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="windlass console", charset="UTF-8""#),
            )],
            crate::error::page(
                StatusCode::UNAUTHORIZED,
                "Sign in with the console's user and password.",
            ),
        )
            .into_response(),
        Some(Auth::Token(_)) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="windlass console""#),
            )],
            login_page(&inner.config.title, base, message),
        )
            .into_response(),
        None => ConsoleError::Unauthorized(
            "this console has no authentication configured: set ConsoleConfig::token or \
             ConsoleConfig::basic, or mount it with Console::router_with_auth_layer"
                .into(),
        )
        .into_response(),
    }
}

async fn read_form(body: Body) -> Result<Bytes, ConsoleError> {
    axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            ConsoleError::TooLarge(format!("form bodies are limited to {MAX_FORM_BYTES} bytes"))
        })
}

/// The middleware: authenticates, checks CSRF and read-only mode, and hands the page a [`Ctx`].
pub(crate) async fn guard(State(shared): State<Shared>, req: Request, next: Next) -> Response {
    let inner = &shared.inner;
    let base = base_path(&req);
    let path = req.uri().path().to_owned();
    let method = req.method().clone();

    if path.starts_with("/assets/") {
        return next.run(req).await;
    }
    if path == "/login" && !shared.layer {
        return login(inner, &base, req).await;
    }

    let Some((principal, via)) = authenticate(inner, req.headers(), shared.layer) else {
        return unauthorized(inner, &base, None);
    };
    let csrf = inner.csrf_for(&principal);
    let ctx = Ctx {
        base: base.clone(),
        csrf: csrf.clone(),
        read_only: inner.config.read_only,
        scope: inner.config.scope.clone(),
        title: inner.config.title.clone(),
        can_logout: via == Via::Ambient && matches!(inner.config.auth, Some(Auth::Token(_))),
    };

    if method == Method::GET || method == Method::HEAD {
        let mut req = req;
        req.extensions_mut().insert(ctx);
        return next.run(req).await;
    }
    if method != Method::POST {
        return ConsoleError::MethodNotAllowed.into_response();
    }
    if via != Via::BearerHeader
        && let Some(why) = cross_site(req.headers())
    {
        return ConsoleError::Forbidden(format!("cross-site request refused ({why})"))
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes = match read_form(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if via != Via::BearerHeader {
        let given = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !inner.verify(&[b"csrf", principal.as_bytes()], &given) {
            return ConsoleError::Forbidden(
                "missing or wrong CSRF token: reload the page and try again".into(),
            )
            .into_response();
        }
    }
    if path == "/logout" {
        return logout(&base, req_secure_parts(inner, &parts));
    }
    if inner.config.read_only {
        return ConsoleError::Forbidden("this console is read-only".into()).into_response();
    }
    let mut req = Request::from_parts(parts, Body::from(bytes));
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

fn req_secure_parts(inner: &Inner, parts: &axum::http::request::Parts) -> bool {
    let req = Request::from_parts(parts.clone(), Body::empty());
    secure(inner, &req)
}

fn cookie_header(base: &str, value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let path = if base.is_empty() { "/" } else { base };
    let mut c = format!("{COOKIE}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn home(base: &str) -> String {
    crate::pages::url(base, "/")
}

async fn login(inner: &Inner, base: &str, req: Request) -> Response {
    let Some(Auth::Token(token)) = inner.config.auth.clone() else {
        return unauthorized(inner, base, None);
    };
    if req.method() == Method::GET {
        if authenticate(inner, req.headers(), false).is_some() {
            return Redirect::to(&home(base)).into_response();
        }
        return (StatusCode::OK, login_page(&inner.config.title, base, None)).into_response();
    }
    if req.method() != Method::POST {
        return ConsoleError::MethodNotAllowed.into_response();
    }
    if let Some(why) = cross_site(req.headers()) {
        return ConsoleError::Forbidden(format!("cross-site login refused ({why})"))
            .into_response();
    }
    let secure = secure(inner, &req);
    let bytes = match read_form(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let given = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !inner.secret_eq(given.trim(), &token) {
        return unauthorized(inner, base, Some("That token is not valid."));
    }
    let mut resp = Redirect::to(&home(base)).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(base, &inner.session_value(&token), secure, None),
    );
    resp
}

fn logout(base: &str, secure: bool) -> Response {
    let mut resp = Redirect::to(&format!("{base}/login")).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(base, "", secure, Some(0)));
    resp
}

/// Headers every response carries: no framing, no sniffing, scripts and styles from the
/// console only (so even an unescaped string could not run), nothing cached.
pub(crate) async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}
