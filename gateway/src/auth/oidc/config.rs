//! The `[[oidc]]` sections: which identity providers' access tokens the gateway accepts as
//! an agent's password, and how a token's claims become an identity and its roles.
//!
//! ```toml
//! [[oidc]]
//! issuer = "https://idp.example.com"          # must equal the tokens' `iss`
//! audiences = ["urn:portcullis"]              # a token's `aud` must name one of these
//! algorithms = ["RS256", "ES256", "EdDSA"]    # the default; HMAC and `none` are refused
//! identity_claim = "sub"                      # the claim that names the identity
//! role_claims = ["groups", "roles", "scope"]  # claims whose values map to roles
//! role_map = { "db-writers" = "writer" }      # claim value -> gateway role
//! roles = []                                  # roles every identity of this issuer gets
//! require_typ = "at+jwt"                      # "" accepts a token without `typ`
//! clock_skew_secs = 30
//! ca = "/etc/portcullis/idp-ca.pem"           # the provider's TLS; web PKI roots otherwise
//! jwks_refetch_min_secs = 60                  # an unknown `kid` refetches at most this often
//! jwks_refresh_secs = 3600                    # cached keys are refreshed in the background
//! scope = "openid"                            # what OAUTHBEARER's discovery reply asks for
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The signature algorithms an issuer may use. There is deliberately no HMAC: a shared
/// secret with the provider would let the gateway mint tokens, and accepting `HS256` with
/// a public key as the secret is the classic algorithm-confusion forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub(super) fn to_jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
        }
    }
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
}
fn default_identity_claim() -> String {
    "sub".into()
}
fn default_role_claims() -> Vec<String> {
    vec!["groups".into(), "roles".into(), "scope".into()]
}
fn default_typ() -> String {
    "at+jwt".into()
}
fn default_skew() -> u64 {
    30
}
fn default_refetch_min() -> u64 {
    60
}
fn default_refresh() -> u64 {
    3600
}
fn default_scope() -> String {
    "openid".into()
}

/// One `[[oidc]]` issuer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    /// Where the discovery document is, when not at the issuer's
    /// `/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    #[serde(default = "default_role_claims")]
    pub role_claims: Vec<String>,
    /// Claim values (a group, a role, a scope) and the gateway role each gives. Values
    /// not listed give nothing: a group the provider adds later opens nothing by itself.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    /// Roles every identity of this issuer gets.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The `typ` header a token must carry (RFC 9068: `at+jwt`, also accepted as
    /// `application/at+jwt`); empty: not checked, for providers that omit it.
    #[serde(default = "default_typ")]
    pub require_typ: String,
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// CA bundle for the provider's HTTPS; the web PKI roots otherwise.
    pub ca: Option<PathBuf>,
    #[serde(default = "default_refetch_min")]
    pub jwks_refetch_min_secs: u64,
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// The scope OAUTHBEARER's discovery reply tells clients to ask for.
    #[serde(default = "default_scope")]
    pub scope: String,
}

impl OidcConfig {
    /// The discovery document's address.
    pub fn discovery(&self) -> String {
        match &self.discovery_url {
            Some(u) => u.clone(),
            None => format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ),
        }
    }

    /// Checks one section; errors are `(key, problem)` with the key relative to it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = |key: &'static str, u: &str| -> Result<(), (&'static str, String)> {
            let uri: hyper::Uri = u
                .parse()
                .map_err(|e| (key, format!("\"{u}\" is not a URL: {e}")))?;
            match uri.scheme_str() {
                Some("https") => Ok(()),
                // A provider on this host (tests, a sidecar) needs no TLS; anywhere else
                // plain HTTP would let the network swap the keys.
                Some("http") if is_loopback(uri.host().unwrap_or("")) => Ok(()),
                _ => Err((
                    key,
                    format!("\"{u}\" must be an https:// URL (http:// only on loopback)"),
                )),
            }
        };
        url("issuer", &self.issuer)?;
        if let Some(d) = &self.discovery_url {
            url("discovery_url", d)?;
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err((
                "audiences",
                "name at least one audience: tokens for other services must not open the database"
                    .into(),
            ));
        }
        if self.algorithms.is_empty() {
            return Err(("algorithms", "must name at least one algorithm".into()));
        }
        if self.identity_claim.is_empty() {
            return Err(("identity_claim", "must not be empty".into()));
        }
        if let Some(ca) = &self.ca
            && !ca.exists()
        {
            return Err(("ca", format!("{} does not exist", ca.display())));
        }
        if self.jwks_refresh_secs == 0 {
            return Err(("jwks_refresh_secs", "must be at least 1".into()));
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<OidcConfig, String> {
        let c: OidcConfig = toml::from_str(&format!(
            "issuer = \"https://idp.example\"\naudiences = [\"db\"]\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate().map_err(|(k, p)| format!("{k}: {p}"))?;
        Ok(c)
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let c = parse("").unwrap();
        assert_eq!(c.algorithms, default_algorithms());
        assert_eq!(c.require_typ, "at+jwt");
        assert_eq!(
            c.discovery(),
            "https://idp.example/.well-known/openid-configuration"
        );
    }

    #[test]
    fn hmac_none_and_plain_http_are_refused() {
        for alg in ["HS256", "none"] {
            let e = parse(&format!("algorithms = [\"{alg}\"]")).unwrap_err();
            assert!(e.contains("unknown variant"), "{alg}: {e}");
        }
        let e =
            toml::from_str::<OidcConfig>("issuer = \"http://idp.example\"\naudiences = [\"db\"]\n")
                .unwrap()
                .validate()
                .unwrap_err();
        assert_eq!(e.0, "issuer");
        let ok = toml::from_str::<OidcConfig>(
            "issuer = \"http://127.0.0.1:4000\"\naudiences = [\"db\"]\n",
        )
        .unwrap();
        assert!(ok.validate().is_ok());
        let e = toml::from_str::<OidcConfig>("issuer = \"https://i\"\naudiences = []\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "audiences");
    }
}
