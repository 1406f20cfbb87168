//! Which web pages may open qkv sessions from a browser (WebTransport, WebSocket). A browser names the
//! page that asks in the `Origin` header, and lets any page open a session to any server: a page of
//! another site could otherwise use a visitor's network position (or client certificate) to reach a
//! qkv server. So a session whose `Origin` is not allowed is refused (403). A request without `Origin`
//! does not come from a page (browsers always send it for these sessions) and is allowed: its client
//! speaks for itself, like any QUIC or TCP client.
//!
//! Allowed: the web listener's own origin (the console it serves), and those given with `--web-origin`
//! (`*` for any).
//!
//! The own origin is the listener's scheme and port under a host name it answers to: DNS rebinding
//! (a site's name made to resolve to the server's address) would otherwise make a page of that site
//! the listener's own, since its origin and the `Host` it sends are both the site's name. Over TLS
//! the certificate stops it (the browser refuses a certificate without the name); in plaintext only
//! the `Host` check does: a request for a host the listener does not answer to is refused, whatever
//! its route ([`Origins::answers_to`]).

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
    /// Further host names the web listener answers to (`--web-host`): names a proxy forwards.
    hosts: Vec<String>,
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

    /// With further host names the web listener answers to (`--web-host`), such as the public name a
    /// proxy forwards; `*` for any (DNS rebinding is then the proxy's to stop).
    pub fn with_hosts(mut self, hosts: &[String]) -> Result<Origins, String> {
        for host in hosts {
            let name = host.trim().to_ascii_lowercase();
            let valid = name == "*"
                || (!name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
            if !valid {
                return Err(format!(
                    "{host:?} is not a host name: a DNS name such as kv.example.com, without scheme or port, or *"
                ));
            }
            self.hosts.push(name);
        }
        Ok(self)
    }

    /// Whether the web listener answers to `host` (a request's `Host` or `:authority`, without its
    /// port): an IP address (no name to rebind), `localhost`, a name of the server's certificate, or
    /// one given with `--web-host`. No host at all (HTTP/1.0) is not a browser's request, and passes.
    pub fn answers_to(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
        host.is_empty()
            || bare.parse::<std::net::IpAddr>().is_ok()
            || host == "localhost"
            || self.names.iter().any(|name| covers(name, &host))
            || self.hosts.iter().any(|name| name == "*" || *name == host)
    }

    /// Whether a session asked for by page `origin` may open; `host` is the host (without port) the
    /// client dialled, whose web listener's origin is allowed when the listener answers to it (as are
    /// the certificate's names').
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
        // A page under a name the certificate covers (a wildcard's too) is the listener's own,
        // whichever host the session dialled (the address the QUIC endpoint listens on).
        let page_host = origin.split_once("://").map_or("", |(_, authority)| host_of(authority));
        (self.answers_to(host) && own(host))
            || (self.names.iter().any(|name| covers(name, page_host)) && own(page_host))
            || self.allowed.contains(&origin)
    }
}

/// Whether a certificate's `name` covers `host` (in lower case): the same name, or a wildcard name
/// (`*.example.com`) and a host of one more label (`kv.example.com`, not `a.kv.example.com` nor
/// `example.com`), as a browser checks it (RFC 6125, section 6.4.3).
fn covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => name.eq_ignore_ascii_case(host),
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
    fn a_page_of_a_rebound_name_is_not_the_listener_s_own() {
        let plain = origins(&[]).with_web_listener("http", 9528);
        assert!(!plain.answers_to("evil.test"));
        assert!(!plain.allows(Some("http://evil.test:9528"), "evil.test"), "DNS rebinding");
        for host in ["127.0.0.1", "[::1]", "localhost", "LOCALHOST.", "10.0.0.7", ""] {
            assert!(plain.answers_to(host), "{host}");
        }
        assert!(plain.allows(Some("http://127.0.0.1:9528"), "127.0.0.1"));
        let proxied = plain.with_hosts(&["KV.example.com".into()]).unwrap();
        assert!(proxied.answers_to("kv.example.com"));
        assert!(proxied.allows(Some("http://kv.example.com:9528"), "kv.example.com"));
        assert!(!proxied.answers_to("evil.test"));
        let named = origins(&[]).with_web_listener("https", 9528).with_names(vec!["kv.internal".into()]);
        assert!(named.answers_to("kv.internal"));
        for bad in ["http://kv.example.com", "kv.example.com:80", ""] {
            assert!(origins(&[]).with_hosts(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(origins(&[]).with_hosts(&["*".into()]).unwrap().answers_to("anything.example"));
    }

    /// A wildcard certificate's name covers one label more, as a browser checks it: a listener with
    /// one answered 421 to every name it was meant for.
    #[test]
    fn a_wildcard_name_covers_one_label_more() {
        let wildcard = origins(&[]).with_web_listener("https", 9528).with_names(vec!["*.example.com".into()]);
        for host in ["kv.example.com", "KV.Example.com."] {
            assert!(wildcard.answers_to(host), "{host}");
        }
        assert!(wildcard.allows(Some("https://kv.example.com:9528"), "kv.example.com"));
        // The console's WebTransport session dials the address QUIC listens on, not the page's host.
        assert!(wildcard.allows(Some("https://kv.example.com:9528"), "10.0.0.7"));
        assert!(!wildcard.allows(Some("https://kv.example.com:9529"), "10.0.0.7"), "another port");
        assert!(!wildcard.allows(Some("https://a.kv.example.com:9528"), "10.0.0.7"), "not covered");
        for host in ["example.com", "a.kv.example.com", ".example.com", "kvexample.com", "evil.test"] {
            assert!(!wildcard.answers_to(host), "{host}");
        }
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
