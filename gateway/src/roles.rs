//! Gateway roles down to the database. A `[[role]]` may name an upstream PostgreSQL role:
//! the gateway logs in as `[upstream] user` (the login role) and, for a session whose
//! roles name one, runs `SET ROLE` to it before the agent gets `ReadyForQuery`, so the
//! server's own privileges back the policy.
//!
//! Roles are the strings identities and policy rules already use (`roles = ["agent"]`);
//! a `[[role]]` entry only adds what the database should see. When a session holds
//! several roles that name upstream roles, the one listed **last** in the file wins:
//! list them from least to most privileged, so that a role added for a while (a grant)
//! raises the session rather than lowers it. The choice takes a list of role names, so
//! whatever adds roles (identities, OIDC claims, grants) feeds the same function.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role as identities and policy rules name it.
    pub name: String,
    /// The PostgreSQL role the session runs as (`SET ROLE`); the login role must be a
    /// member of it. None: the session stays the login role.
    pub upstream_role: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct RoleError {
    pub key: String,
    pub problem: String,
}

/// PostgreSQL's NAMEDATALEN less the terminator: a longer name is silently truncated
/// by the server, and the session would run as some other role.
const MAX_NAME: usize = 63;

/// Checks the `[[role]]` list: unique names, and upstream roles the server will take as
/// the role meant.
pub fn validate(roles: &[RoleConfig]) -> Result<(), RoleError> {
    let bad = |i: usize, field: &str, problem: String| RoleError {
        key: format!("role[{i}].{field}"),
        problem,
    };
    let mut seen = std::collections::HashSet::new();
    for (i, r) in roles.iter().enumerate() {
        if r.name.is_empty() {
            return Err(bad(i, "name", "must not be empty".into()));
        }
        if !seen.insert(r.name.as_str()) {
            return Err(bad(
                i,
                "name",
                format!("\"{}\" is configured twice", r.name),
            ));
        }
        if let Some(u) = &r.upstream_role {
            if u.is_empty() || u.contains('\0') {
                return Err(bad(i, "upstream_role", "must be a role name".into()));
            }
            if u.len() > MAX_NAME {
                return Err(bad(
                    i,
                    "upstream_role",
                    format!("PostgreSQL role names have at most {MAX_NAME} bytes"),
                ));
            }
            // `SET ROLE none` (quoted or not) means "back to the login role".
            if u.eq_ignore_ascii_case("none") || u.eq_ignore_ascii_case("public") {
                return Err(bad(
                    i,
                    "upstream_role",
                    format!("\"{u}\" is not a role PostgreSQL can SET ROLE to"),
                ));
            }
        }
    }
    Ok(())
}

/// The `[[role]]` entries that name an upstream role, in file order.
#[derive(Debug, Default, Clone)]
pub struct RoleMap {
    upstream: Vec<(String, String)>,
}

impl RoleMap {
    pub fn new(roles: &[RoleConfig]) -> Self {
        RoleMap {
            upstream: roles
                .iter()
                .filter_map(|r| Some((r.name.clone(), r.upstream_role.clone()?)))
                .collect(),
        }
    }

    /// The upstream role a session holding `roles` runs as: of the `[[role]]` entries
    /// naming one that the session holds, the last in the file. `None`: the login role.
    pub fn upstream_role<S: AsRef<str>>(&self, roles: &[S]) -> Option<&str> {
        self.upstream
            .iter()
            .rev()
            .find(|(name, _)| roles.iter().any(|r| r.as_ref() == name))
            .map(|(_, upstream)| upstream.as_str())
    }
}

/// `SET ROLE "name"`, the name quoted as an identifier so that case, spaces and quotes
/// reach the server as written.
pub fn set_role_sql(role: &str) -> String {
    format!("SET ROLE \"{}\"", role.replace('"', "\"\""))
}

/// A start-up parameter by which the agent would pick who its upstream session is
/// (`role`, `session_authorization`, or either inside `options`), which the gateway
/// refuses: only `[[role]]` decides that. PostgreSQL takes any setting as a start-up
/// parameter and folds its name's case.
pub fn identity_parameter(params: &[(String, String)]) -> Option<&str> {
    const NAMES: [&str; 2] = ["role", "session_authorization"];
    params.iter().find_map(|(k, v)| {
        let key = k.to_ascii_lowercase();
        let hit = NAMES.contains(&key.as_str())
            // `-c role=x`, `--role=x`, `-crole=x`, with any spacing or escaping: any
            // mention is refused rather than parsed as the server would.
            || (key == "options" && {
                let v = v.to_ascii_lowercase();
                NAMES.iter().any(|n| v.contains(n))
            });
        hit.then_some(k.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, upstream: Option<&str>) -> RoleConfig {
        RoleConfig {
            name: name.into(),
            upstream_role: upstream.map(Into::into),
            description: None,
        }
    }

    #[test]
    fn the_last_listed_role_wins() {
        let map = RoleMap::new(&[
            role("reader", Some("app_read")),
            role("policy-only", None),
            role("writer", Some("app_write")),
        ]);
        assert_eq!(map.upstream_role(&["reader"]), Some("app_read"));
        assert_eq!(map.upstream_role(&["writer", "reader"]), Some("app_write"));
        assert_eq!(map.upstream_role(&["reader", "writer"]), Some("app_write"));
        assert_eq!(map.upstream_role(&["policy-only"]), None);
        assert_eq!(map.upstream_role::<&str>(&[]), None);
        assert_eq!(map.upstream_role(&["Reader"]), None, "names are exact");
        let owned = vec!["reader".to_string()];
        assert_eq!(map.upstream_role(&owned), Some("app_read"));
    }

    #[test]
    fn validation_names_the_key() {
        assert!(validate(&[role("a", Some("x")), role("b", None)]).is_ok());
        let e = validate(&[role("a", None), role("a", None)]).unwrap_err();
        assert_eq!(e.key, "role[1].name");
        let e = validate(&[role("", None)]).unwrap_err();
        assert_eq!(e.key, "role[0].name");
        for bad in ["", "none", "NONE", "public", &"x".repeat(64)] {
            let e = validate(&[role("a", Some(bad))]).unwrap_err();
            assert_eq!(e.key, "role[0].upstream_role", "{bad}");
        }
        assert!(validate(&[role("a", Some(&"x".repeat(63)))]).is_ok());
    }

    #[test]
    fn set_role_quotes_the_name() {
        assert_eq!(set_role_sql("app_read"), "SET ROLE \"app_read\"");
        assert_eq!(
            set_role_sql("Odd \"name\"; RESET ROLE"),
            "SET ROLE \"Odd \"\"name\"\"; RESET ROLE\""
        );
    }

    #[test]
    fn start_up_parameters_that_pick_the_role_are_found() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(identity_parameter(&p("role", "postgres")), Some("role"));
        assert_eq!(identity_parameter(&p("ROLE", "postgres")), Some("ROLE"));
        assert_eq!(
            identity_parameter(&p("session_authorization", "postgres")),
            Some("session_authorization")
        );
        for v in [
            "-c role=postgres",
            "--role=x",
            "-c ROLE=x",
            "-csession_authorization=x",
        ] {
            assert_eq!(identity_parameter(&p("options", v)), Some("options"), "{v}");
        }
        assert_eq!(identity_parameter(&p("options", "-c work_mem=64MB")), None);
        assert_eq!(identity_parameter(&p("application_name", "role")), None);
    }
}
