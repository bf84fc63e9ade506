//! Which web origins may use the API from a browser (`server.cors_allowed_origins`).
//!
//! Clients authenticate with a bearer token they hold, never with a cookie the browser attaches
//! on its own, so a page of another origin can only act for a user who gave it a token: any
//! origin is allowed by default (the seeds' development setting), and a deployment narrows it to
//! its own web apps. The HTTP API answers CORS (preflights, `Access-Control-Allow-Origin`) with
//! `actix-cors`; WebSockets are outside CORS, so `/ws` checks the `Origin` header itself.

use actix_cors::Cors;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};

/// How long a browser may cache a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE_SECS: usize = 3600;

/// The parsed setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: every origin.
    Any,
    /// Exactly these origins (`scheme://host[:port]`); empty = none (same-origin use only).
    Only(Vec<String>),
}

impl AllowedOrigins {
    /// Parse `"*"` or a comma-separated list of origins; an entry that is not an origin
    /// (`https://chat.example.com`, no path) is refused, so a typo fails at start-up instead of
    /// silently locking every browser out.
    pub fn parse(setting: &str) -> Result<Self, String> {
        let entries: Vec<&str> = setting
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.contains(&"*") {
            return if entries.len() == 1 {
                Ok(AllowedOrigins::Any)
            } else {
                Err("`*` cannot be combined with other origins".into())
            };
        }
        for e in &entries {
            let uri: actix_web::http::Uri = e
                .parse()
                .map_err(|err| format!("`{e}` is not an origin: {err}"))?;
            let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
            if uri.scheme().is_none() || uri.host().is_none() || !bare || e.ends_with('/') {
                return Err(format!(
                    "`{e}` is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(AllowedOrigins::Only(
            entries.into_iter().map(str::to_owned).collect(),
        ))
    }

    /// Whether a request with this `Origin` header may open a WebSocket. No header (a client
    /// that is not a browser) is always allowed: the check only stops other sites' pages.
    pub fn allows(&self, origin: Option<&HeaderValue>) -> bool {
        match (self, origin) {
            (AllowedOrigins::Any, _) | (_, None) => true,
            (AllowedOrigins::Only(list), Some(o)) => {
                o.to_str().is_ok_and(|o| list.iter().any(|a| a == o))
            }
        }
    }

    /// The CORS middleware for the HTTP API: the methods the API has, any request header,
    /// `Retry-After` readable by scripts (it tells a client when to retry a 429 or 503).
    pub fn middleware(&self) -> Cors {
        let base = Cors::default()
            .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
            .allow_any_header()
            .expose_headers([RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE_SECS);
        match self {
            AllowedOrigins::Any => base.allow_any_origin().send_wildcard(),
            AllowedOrigins::Only(list) => list.iter().fold(base, |c, o| c.allowed_origin(o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AllowedOrigins;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn the_setting_is_a_star_or_a_list_of_bare_origins() {
        assert_eq!(AllowedOrigins::parse("*"), Ok(AllowedOrigins::Any));
        assert_eq!(AllowedOrigins::parse(""), Ok(AllowedOrigins::Only(vec![])));
        assert_eq!(
            AllowedOrigins::parse(" https://a.example , http://localhost:5173 "),
            Ok(AllowedOrigins::Only(vec![
                "https://a.example".into(),
                "http://localhost:5173".into()
            ]))
        );
        for bad in [
            "*,https://a.example",
            "a.example",
            "https://a.example/app",
            "https://a.example/",
            "not an origin",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_origins_are_checked_only_against_a_list() {
        let list = AllowedOrigins::parse("https://a.example").unwrap_or(AllowedOrigins::Any);
        let a = HeaderValue::from_static("https://a.example");
        let b = HeaderValue::from_static("https://b.example");
        assert!(list.allows(Some(&a)));
        assert!(!list.allows(Some(&b)));
        assert!(list.allows(None), "a client without an Origin header");
        assert!(AllowedOrigins::Any.allows(Some(&b)));
    }
}
