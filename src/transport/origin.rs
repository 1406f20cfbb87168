//! Which web pages may open qkv sessions from a browser (WebTransport, WebSocket). A browser names the
//! page that asks in the `Origin` header, and lets any page open a session to any server: a page of
//! another site could otherwise use a visitor's network position (or client certificate) to reach a
//! qkv server. So a session whose `Origin` is not allowed is refused (403). A request without `Origin`
//! does not come from a page (browsers always send it for these sessions) and is allowed: its client
//! speaks for itself, like any QUIC or TCP client.
//!
//! Allowed: the web listener's own origin (the console it serves), and those given with `--web-origin`
//! (`*` for any).

/// The origins allowed to open sessions. Compared normalised: scheme and host in lower case, the
/// scheme's default port left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    allowed: Vec<String>,
    any: bool,
    /// The web listener's scheme and port, when there is one.
    web: Option<(&'static str, u16)>,
    /// The server certificate's names (host names, IP addresses), its pages' hosts too.
    names: Vec<String>,
}

impl Origins {
    /// `allowed`: origins such as `https://app.example.com` or `http://localhost:5173`, or `*`.
    pub fn new(allowed: &[String]) -> Result<Origins, String> {
        let mut origins = Origins::default();
        for origin in allowed {
            if origin == "*" {
                origins.any = true;
                continue;
            }
            let normal = normalise(origin).ok_or_else(|| {
                format!(
                    "{origin:?} is not an origin: scheme://host[:port], such as https://app.example.com, or *"
                )
            })?;
            origins.allowed.push(normal);
        }
        Ok(origins)
    }

    /// With the web listener's own origins: `scheme` (`https`, or `http` in plaintext) on `port`, for
    /// whichever host name its pages were loaded by.
    pub fn with_web_listener(mut self, scheme: &'static str, port: u16) -> Origins {
        self.web = Some((scheme, port));
        self
    }

    /// With the names of the server's certificate: a page loaded from the web listener under any of
    /// them is the listener's own (a browser loaded it only after checking that certificate), even when
    /// its session dials another (a WebTransport session dials the address the QUIC endpoint listens
    /// on, `localhost`'s page included).
    pub fn with_names(mut self, names: Vec<String>) -> Origins {
        self.names = names
            .into_iter()
            .map(|name| if name.contains(':') { format!("[{name}]") } else { name })
            .collect();
        self
    }

    /// Whether a session asked for by page `origin` may open; `host` is the host (without port) the
    /// client dialled, whose web listener's origin is allowed (as are the certificate's names').
    pub fn allows(&self, origin: Option<&str>, host: &str) -> bool {
        let Some(origin) = origin else { return true };
        if self.any {
            return true;
        }
        let Some(origin) = normalise(origin) else { return false };
        let own = |host: &str| {
            self.web
                .and_then(|(scheme, port)| normalise(&format!("{scheme}://{host}:{port}")))
                .is_some_and(|own| own == origin)
        };
        own(host) || self.names.iter().any(|name| own(name)) || self.allowed.contains(&origin)
    }
}

/// `scheme://host[:port]` in lower case, without the scheme's default port; `None` if `origin` is not
/// one (an origin has no path, query or user).
fn normalise(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || authority.is_empty() {
        return None;
    }
    if authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// The host of `authority` (`host[:port]`, IPv6 in brackets), without its port.
pub fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(host, _)| &authority[..host.len() + 2]);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Origins {
        Origins::new(&list.iter().map(|o| o.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_own_origin_and_the_listed_ones_are_allowed_compared_normalised() {
        let listed = origins(&["https://App.example.com:443", "http://localhost:5173"])
            .with_web_listener("https", 9528);
        let own = "localhost";
        assert!(listed.allows(Some("https://localhost:9528"), own));
        assert!(listed.allows(Some("HTTPS://LOCALHOST:9528"), own));
        assert!(!listed.allows(Some("https://127.0.0.1:9528"), own), "another host's listener");
        assert!(listed.allows(Some("https://app.example.com"), own));
        assert!(listed.allows(Some("http://localhost:5173"), own));
        assert!(!listed.allows(Some("https://localhost:5173"), own), "another scheme is another origin");
        assert!(!listed.allows(Some("https://evil.example"), own));
        assert!(!listed.allows(Some("null"), own), "an opaque origin is nobody's");
        assert!(!origins(&[]).allows(Some("https://localhost:9528"), own), "no web listener, no own origin");
    }

    #[test]
    fn pages_under_the_certificate_s_names_are_the_listener_s_own_whichever_host_is_dialled() {
        let own =
            origins(&[]).with_web_listener("https", 9528).with_names(vec!["localhost".into(), "::1".into()]);
        assert!(own.allows(Some("https://localhost:9528"), "127.0.0.1"));
        assert!(own.allows(Some("https://[::1]:9528"), "127.0.0.1"));
        assert!(!own.allows(Some("https://localhost:9529"), "127.0.0.1"), "another port");
        assert!(!own.allows(Some("https://kv.example:9528"), "127.0.0.1"), "not a name of the certificate");
    }

    #[test]
    fn no_origin_is_not_a_page_and_star_allows_any_page() {
        assert!(origins(&[]).allows(None, "localhost"));
        assert!(origins(&["*"]).allows(Some("https://anything.example"), "localhost"));
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_form_it_takes() {
        for bad in ["localhost:9528", "https://", "https://a.example/path", "ftp://a.example", "https://u@a"]
        {
            let error = Origins::new(&[bad.to_string()]).unwrap_err();
            assert!(error.contains("scheme://host[:port]"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_host_is_its_authority_without_the_port() {
        assert_eq!(host_of("localhost:9527"), "localhost");
        assert_eq!(host_of("[::1]:9527"), "[::1]");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
