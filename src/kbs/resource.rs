//! KBS resource URIs: `kbs:///<repository>/<type>/<tag>` (guest-components `resource_uri`).
//! The authority part (`kbs://<host>/...`) is accepted and ignored: which KBS to ask comes from
//! configuration only, never from a request or an image annotation.

use super::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUri {
    pub repository: String,
    pub kind: String,
    pub tag: String,
}

impl ResourceUri {
    /// Parses `kbs:///repo/type/tag`, `kbs://host/repo/type/tag`, or the bare `repo/type/tag`
    /// (and `/repo/type/tag`) the getresource API passes.
    pub fn parse(input: &str) -> Result<Self> {
        let err = |why: &str| Error::InvalidUri(format!("{input:?}: {why}"));
        let path = match input.strip_prefix("kbs://") {
            Some(rest) => rest
                .split_once('/')
                .map(|(_authority, path)| path)
                .ok_or_else(|| err("no resource path"))?,
            None if input.contains("://") => return Err(err("the scheme must be kbs://")),
            None => input.strip_prefix('/').unwrap_or(input),
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = parts.as_slice() else {
            return Err(err("expected <repository>/<type>/<tag>"));
        };
        for part in [repository, kind, tag] {
            let safe = !part.is_empty()
                && *part != "."
                && *part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !safe {
                return Err(err(
                    "each segment must be non-empty and only letters, digits, '-', '_', '.'",
                ));
            }
        }
        Ok(ResourceUri {
            repository: (*repository).to_owned(),
            kind: (*kind).to_owned(),
            tag: (*tag).to_owned(),
        })
    }

    /// `repo/type/tag`, the path under `/kbs/v0/resource/`.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

impl std::fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kbs:///{}", self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        for input in [
            "kbs:///default/key/one",
            "kbs://kbs.example:8080/default/key/one",
            "default/key/one",
            "/default/key/one",
        ] {
            let uri = ResourceUri::parse(input).unwrap();
            assert_eq!(uri.path(), "default/key/one", "{input}");
        }
        assert_eq!(
            ResourceUri::parse("default/key/one").unwrap().to_string(),
            "kbs:///default/key/one"
        );
    }

    #[test]
    fn refuses_bad_paths() {
        for input in [
            "kbs:///default/key",
            "kbs:///a/b/c/d",
            "kbs:///a/../c",
            "kbs:///a//c",
            "https://x/a/b/c",
            "kbs:///a/b/c%2f",
            "",
        ] {
            assert!(
                matches!(ResourceUri::parse(input), Err(Error::InvalidUri(_))),
                "{input}"
            );
        }
    }
}
