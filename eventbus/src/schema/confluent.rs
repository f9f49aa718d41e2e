//! A client of a Confluent-compatible schema registry's REST API (feature `schema-registry`):
//! Confluent Schema Registry, Redpanda, Karapace, Apicurio's compatibility API.
//!
//! It reads; it never registers. The subset of the API used: `GET /subjects`,
//! `GET /subjects/{subject}/versions`, `GET /subjects/{subject}/versions/{version}`,
//! `GET /schemas/ids/{id}` and `GET /config[/{subject}]`. Only `JSON` schemas are loaded.
//! Credentials (HTTP basic auth, from the URL's `user:password@` or
//! [`ConfluentRegistry::basic_auth`]) never appear in `Debug` output or errors.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::schema::{Compatibility, SchemaError, SchemaRegistry};

const ACCEPT: &str = "application/vnd.schemaregistry.v1+json, application/json";

/// One version of a subject, as the registry stores it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegisteredSchema {
    /// The subject.
    pub subject: String,
    /// Its version number in the subject (1, 2...).
    pub version: u32,
    /// The registry-wide schema id.
    pub id: u64,
    /// The JSON Schema.
    pub schema: Value,
}

#[derive(Deserialize)]
struct VersionReply {
    subject: String,
    version: u32,
    id: u64,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    schema: String,
}

#[derive(Deserialize)]
struct SchemaReply {
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    schema: String,
}

#[derive(Deserialize)]
struct ConfigReply {
    #[serde(rename = "compatibilityLevel", alias = "compatibility")]
    compatibility_level: String,
}

/// A read-only client of a Confluent-compatible schema registry.
///
/// ```no_run
/// use windlass_eventbus::schema::{ConfluentRegistry, SchemaRegistry};
///
/// # #[allow(dead_code)]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let remote = ConfluentRegistry::new("https://registry.example.com")?
///     .basic_auth("api-key", "api-secret");
/// let registry = SchemaRegistry::new();
/// // Subject `invoice.paid` holds the versions of event type `invoice.paid`.
/// remote.load_subject(&registry, "invoice.paid", "invoice.paid").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConfluentRegistry {
    client: reqwest::Client,
    /// Base URL without credentials or trailing slash.
    base: String,
    auth: Option<(String, String)>,
}

impl fmt::Debug for ConfluentRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfluentRegistry")
            .field("url", &self.base)
            .field("user", &self.auth.as_ref().map(|(u, _)| u.as_str()))
            .field("password", &self.auth.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Splits `scheme://user:password@host/...` into the URL without credentials and the
/// credentials.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let clean = format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..]);
    (clean, Some((user.to_owned(), password.to_owned())))
}

/// Percent-encodes a path segment (subjects may hold `/`, `:` or spaces).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl ConfluentRegistry {
    /// A client of the registry at `url` (`http://` or `https://`). Credentials in the URL
    /// (`https://key:secret@host`) are used as HTTP basic auth and removed from the URL.
    pub fn new(url: &str) -> Result<Self, SchemaError> {
        let (base, auth) = split_credentials(url.trim());
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SchemaError::Registry {
                url: base,
                reason: "the URL must start with http:// or https://".to_owned(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SchemaError::Registry {
                url: base.clone(),
                reason: format!("cannot build the HTTP client: {}", e.without_url()),
            })?;
        Ok(Self { client, base, auth })
    }

    /// Uses HTTP basic auth (Confluent Cloud: API key and secret).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// The registry URL, without credentials.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn fail(&self, reason: impl Into<String>) -> SchemaError {
        let mut reason = reason.into();
        if let Some((_, password)) = &self.auth
            && !password.is_empty()
        {
            reason = reason.replace(password.as_str(), "***");
        }
        SchemaError::Registry {
            url: self.base.clone(),
            reason,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, SchemaError> {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::ACCEPT, ACCEPT);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.fail(format!("GET {path}: {}", e.without_url())))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.fail(format!("GET {path}: {}", e.without_url())))?;
        if !status.is_success() {
            // Confluent errors are {"error_code": 40401, "message": "..."}.
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(self.fail(format!("GET {path}: HTTP {status}: {message}")));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.fail(format!("GET {path}: unexpected answer: {e}")))
    }

    fn parse_json_schema(
        &self,
        what: &str,
        schema_type: Option<&str>,
        text: &str,
    ) -> Result<Value, SchemaError> {
        // No `schemaType` means AVRO in the Confluent API.
        let ty = schema_type.unwrap_or("AVRO");
        if !ty.eq_ignore_ascii_case("JSON") {
            return Err(self.fail(format!(
                "{what} is a {ty} schema; only JSON schemas can validate CloudEvents data here"
            )));
        }
        serde_json::from_str(text)
            .map_err(|e| self.fail(format!("{what}: the schema is not JSON: {e}")))
    }

    /// Every subject.
    pub async fn subjects(&self) -> Result<Vec<String>, SchemaError> {
        self.get("/subjects").await
    }

    /// The version numbers of `subject`, oldest first.
    pub async fn versions(&self, subject: &str) -> Result<Vec<u32>, SchemaError> {
        let mut v: Vec<u32> = self
            .get(&format!("/subjects/{}/versions", segment(subject)))
            .await?;
        v.sort_unstable();
        Ok(v)
    }

    /// Version `version` of `subject`.
    pub async fn schema(
        &self,
        subject: &str,
        version: u32,
    ) -> Result<RegisteredSchema, SchemaError> {
        let r: VersionReply = self
            .get(&format!(
                "/subjects/{}/versions/{version}",
                segment(subject)
            ))
            .await?;
        let what = format!("subject {subject} version {version}");
        let schema = self.parse_json_schema(&what, r.schema_type.as_deref(), &r.schema)?;
        Ok(RegisteredSchema {
            subject: r.subject,
            version: r.version,
            id: r.id,
            schema,
        })
    }

    /// The schema with registry-wide id `id`.
    pub async fn schema_by_id(&self, id: u64) -> Result<Value, SchemaError> {
        let r: SchemaReply = self.get(&format!("/schemas/ids/{id}")).await?;
        self.parse_json_schema(
            &format!("schema id {id}"),
            r.schema_type.as_deref(),
            &r.schema,
        )
    }

    /// The compatibility level of `subject` (falling back to the global level), or the global
    /// level for `None`.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, SchemaError> {
        let path = match subject {
            Some(s) => format!("/config/{}?defaultToGlobal=true", segment(s)),
            None => "/config".to_owned(),
        };
        let r: ConfigReply = self.get(&path).await?;
        Compatibility::from_confluent(&r.compatibility_level).ok_or_else(|| {
            self.fail(format!(
                "unknown compatibility level {:?}",
                r.compatibility_level
            ))
        })
    }

    /// The version URI events carry in `dataschema` for `schema`: the schema's `$id` when it
    /// has one, else `{registry url}/schemas/ids/{id}` (which serves the schema).
    pub fn version_uri(&self, schema: &RegisteredSchema) -> String {
        schema
            .schema
            .get("$id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}/schemas/ids/{}", self.base, schema.id))
    }

    /// Registers every version of `subject`, oldest first, in `registry` as versions of
    /// `event_type` (named by [`ConfluentRegistry::version_uri`]). The remote registry already
    /// enforced its own compatibility level on this history, so the versions are registered
    /// without the local check ([`SchemaRegistry::register_unchecked`]). Returns how many were
    /// registered.
    pub async fn load_subject(
        &self,
        registry: &SchemaRegistry,
        subject: &str,
        event_type: &str,
    ) -> Result<usize, SchemaError> {
        let versions = self.versions(subject).await?;
        for v in &versions {
            let s = self.schema(subject, *v).await?;
            let uri = self.version_uri(&s);
            registry.register_unchecked(event_type, &uri, s.schema)?;
        }
        Ok(versions.len())
    }

    /// Loads every subject that `event_type_of` maps to an event type (for example the
    /// `TopicNameStrategy`'s `{name}-value` subjects: strip the suffix). Returns how many
    /// versions were registered.
    pub async fn load_subjects(
        &self,
        registry: &SchemaRegistry,
        event_type_of: impl Fn(&str) -> Option<String>,
    ) -> Result<usize, SchemaError> {
        let mut n = 0;
        for subject in self.subjects().await? {
            if let Some(ty) = event_type_of(&subject) {
                n += self.load_subject(registry, &subject, &ty).await?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{segment, split_credentials};

    #[test]
    fn credentials_leave_the_url() {
        let (url, auth) = split_credentials("https://key:s3cret@reg.example.com:8081/base");
        assert_eq!(url, "https://reg.example.com:8081/base");
        assert_eq!(auth, Some(("key".into(), "s3cret".into())));
        assert_eq!(split_credentials("http://h:1").1, None);
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
