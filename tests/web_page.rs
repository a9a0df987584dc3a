//! The web page as served over a real socket: `GET /` and the assets with the headers that keep
//! them safe, the operator's product name escaped into the shell, the per-IP limit left to the
//! API, and unknown paths still the problem 404. The page's behaviour in a browser is tested by
//! `tests/browser` (chromium, `.ci/run`).

mod common;

use common::{Options, spawn_app, spawn_with};

const PAGES: [(&str, &str); 4] = [
    ("/", "text/html; charset=utf-8"),
    ("/assets/app.js", "text/javascript; charset=utf-8"),
    ("/assets/app.css", "text/css; charset=utf-8"),
    ("/assets/icon.svg", "image/svg+xml"),
];

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let app = spawn_app().await;
    for (path, content_type) in PAGES {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.header("content-type"), Some(content_type), "{path}");
        let csp = reply.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
        assert!(reply.header("x-request-id").is_some(), "{path}");
    }
}

#[tokio::test]
async fn the_shell_loads_only_same_origin_assets_and_no_inline_code() {
    let app = spawn_app().await;
    let html = app.get("/", None).await.text;
    assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/assets/app.css">"#));
    assert_eq!(html.matches("<script").count(), 1, "one script, loaded from /assets");
    assert!(!html.contains("style="), "no inline style attributes");
    assert!(!html.contains("<style"), "no inline style sheets");
    for attribute in ["src=\"", "href=\""] {
        for value in html.split(attribute).skip(1) {
            let url = value.split('"').next().unwrap_or_default();
            assert!(
                url.starts_with('/') || url.starts_with('#'),
                "{attribute}{url} leaves the origin"
            );
        }
    }
    let script = app.get("/assets/app.js", None).await.text;
    for sink in [
        ".innerHTML",
        ".outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(
            !script.contains(sink),
            "text is written with textContent only, not {sink}"
        );
    }
    assert!(!script.contains("localStorage") && !script.contains("sessionStorage"));
    let style = app.get("/assets/app.css", None).await.text;
    assert!(
        !style.contains("@import") && !style.contains("url("),
        "nothing fetched from elsewhere"
    );
    assert!(style.contains("prefers-color-scheme: dark") && style.contains("@media print"));
}

#[tokio::test]
async fn the_product_name_is_the_issuer_escaped() {
    let app = spawn_with(Options {
        configure: Box::new(|config| config.service.mfa_issuer = "Acme <Security> & \"Co\"".into()),
        ..Options::default()
    })
    .await;
    let html = app.get("/", None).await.text;
    assert!(
        html.contains("<title>Acme &lt;Security&gt; &amp; &quot;Co&quot;</title>"),
        "{html}"
    );
    assert!(!html.contains("<Security>"));
    assert!(!html.contains("{{product}}"));
}

#[tokio::test]
async fn unknown_pages_and_assets_are_the_problem_404() {
    let app = spawn_app().await;
    for path in ["/login", "/assets/missing.js", "/assets/", "/index.html"] {
        app.get(path, None).await.assert_problem(404, "about:blank");
    }
    let post = app.post("/", None, serde_json::json!({})).await;
    post.assert_problem(405, "about:blank");
}

#[tokio::test]
async fn page_loads_do_not_spend_the_per_ip_limit_of_the_api() {
    let app = spawn_with(Options {
        configure: Box::new(|config| config.ip_rate_limit_per_minute = 2),
        ..Options::default()
    })
    .await;
    for _ in 0..5 {
        for (path, _) in PAGES {
            assert_eq!(app.get(path, None).await.status, 200, "{path}");
        }
    }
    assert_eq!(app.login("nobody@example.com", "wrong password").await.status, 401);
}
