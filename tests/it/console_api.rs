//! The console's backend (issue 19): signing in for a session cookie, CSRF on every change
//! made with it, the anonymous surface, and the API additions the console's pages read.

use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::common::{API_PASSWORD, API_TOKEN, Harness, Options, sample_payload};
use haloflow::config::Config;

fn with_credentials(config: &mut Config) {
    config.server.api.token_secret_name = Some("HALOFLOW_API_TOKEN".into());
    config.server.api.basic_username = Some("ops".into());
    config.server.api.password_secret_name = Some("HALOFLOW_API_PASSWORD".into());
}

fn with_https_credentials(config: &mut Config) {
    with_credentials(config);
    config.server.public_url = Some("https://flows.example.com".into());
}

async fn start(configure: fn(&mut Config)) -> Harness {
    Harness::start_with(Options {
        configure,
        ..Options::default()
    })
    .await
}

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(base: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(format!("{base}/console/login"))
        .form(form)
        .send()
        .await
        .unwrap()
}

/// `name=value` of the session cookie a sign-in set.
fn session_cookie(headers: &HeaderMap) -> String {
    let set = headers[SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn get_with_cookie(url: &str, cookie: &str) -> (u16, Value) {
    let response = browser()
        .get(url)
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap_or(""))
}

#[tokio::test]
async fn a_stranger_reaches_only_the_sign_in_page_and_static_files() {
    let h = start(with_credentials).await;
    for base in [&h.base, &h.api] {
        let page = browser()
            .get(format!("{base}/console/"))
            .header("Accept", "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 303);
        assert_eq!(
            page.headers()[LOCATION],
            "/console/login?next=%2Fconsole%2F"
        );
        let deeper = browser()
            .get(format!("{base}/console/anything?x=1"))
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(deeper.status(), 303);
        let (status, body) = get_with_cookie(&format!("{base}/console/"), "").await;
        assert_eq!(status, 401, "a non-browser client gets the API's answer");
        assert_eq!(body["error"]["code"], "invalid_auth");

        let login = browser()
            .get(format!("{base}/console/login?next=/console/%23/runs"))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        let headers = login.headers().clone();
        assert_eq!(header(&headers, "cache-control"), "no-store");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "same-origin");
        assert!(header(&headers, "content-security-policy").contains("frame-ancestors 'none'"));
        let text = login.text().await.unwrap();
        assert!(text.contains("name=\"password\"") && text.contains("value=\"/console/#/runs\""));

        let css = browser()
            .get(format!("{base}/console/assets/console.css"))
            .send()
            .await
            .unwrap();
        assert_eq!(css.status(), 200);
        assert_eq!(
            header(css.headers(), "content-type"),
            "text/css; charset=utf-8"
        );
        let missing = browser()
            .get(format!("{base}/console/assets/nope.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }
}

#[tokio::test]
async fn wrong_credentials_get_the_form_again_and_no_cookie() {
    let h = start(with_credentials).await;
    for form in [
        &[("username", "ops"), ("password", "wrong")][..],
        &[("username", "other"), ("password", API_PASSWORD)][..],
        &[("token", "wrong-token")][..],
        &[("token", API_PASSWORD)][..],
        &[][..],
    ] {
        let response = sign_in(&h.base, form).await;
        assert_eq!(response.status(), 401, "{form:?}");
        assert!(!response.headers().contains_key(SET_COOKIE), "{form:?}");
        let text = response.text().await.unwrap();
        assert!(
            text.contains("Wrong user name, password or token."),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_session_reads_the_api_and_changes_only_with_its_csrf_token() {
    let h = start(with_https_credentials).await;
    let signed_in = sign_in(
        &h.base,
        &[
            ("username", "ops"),
            ("password", API_PASSWORD),
            ("next", "/console/#/runs"),
        ],
    )
    .await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(signed_in.headers()[LOCATION], "/console/#/runs");
    let set = header(signed_in.headers(), "set-cookie").to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=43200",
        "Secure",
    ] {
        assert!(
            set.split("; ").any(|a| a == attribute),
            "{attribute} in {set}"
        );
    }
    let cookie = session_cookie(signed_in.headers());
    assert!(cookie.starts_with("haloflow_session=v1."), "{cookie}");

    let (status, runs) = get_with_cookie(&format!("{}/api/runs", h.base), &cookie).await;
    assert_eq!(status, 200, "{runs}");
    let (status, session) = get_with_cookie(&format!("{}/api/session", h.base), &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(session["via"], "session");
    assert_eq!(session["user"], "ops");
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    assert!(session["expires_at_ms"].as_i64().unwrap() > haloflow::internals::storage::now_ms());
    let shell = browser()
        .get(format!("{}/console/", h.base))
        .header("Cookie", cookie.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(shell.status(), 200);
    assert!(
        shell
            .text()
            .await
            .unwrap()
            .contains("/console/assets/app.js")
    );

    let failed = failed_run(&h).await;
    let replay = |token: Option<&str>| {
        let mut request = browser()
            .post(format!("{}/api/runs/{failed}/replay", h.base))
            .header("Cookie", cookie.as_str())
            .json(&json!({}));
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for wrong in [None, Some("0123"), Some(&csrf[..63])] {
        let (status, body) = replay(wrong).await;
        assert_eq!(status, 403, "{wrong:?}: {body}");
        assert_eq!(body["error"]["code"], "csrf_failed");
    }
    let (status, body) = replay(Some(&csrf)).await;
    assert_eq!(status, 202, "{body}");

    let logout = |token: Option<&str>| {
        let mut request = browser()
            .post(format!("{}/console/logout", h.base))
            .header("Cookie", cookie.as_str());
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };
    assert_eq!(logout(None).await.unwrap().status(), 403);
    let out = logout(Some(&csrf)).await.unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()[LOCATION], "/console/login");
    assert!(header(out.headers(), "set-cookie").contains("Max-Age=0"));
}

/// A run that failed (Halo refuses the ticket), to replay.
async fn failed_run(h: &Harness) -> String {
    h.halo.fail_next("POST", "/api/Tickets", 400, 2, None);
    let (_, accepted) = h
        .post_json(
            &h.escalate_url("ops"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    let run = h.wait(accepted["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status.as_str(), "failed");
    run.summary.id
}

/// The key material of the API's credentials as the README documents it: each part
/// length-prefixed.
fn material(parts: &[&str]) -> Vec<u8> {
    let mut material = Vec::new();
    for part in parts {
        material.extend_from_slice(&(part.len() as u64).to_be_bytes());
        material.extend_from_slice(part.as_bytes());
    }
    material
}

fn credentials_material(token: &str) -> Vec<u8> {
    material(&["token", token, "basic", "ops", API_PASSWORD])
}

/// The session key as the README documents it: PBKDF2-HMAC-SHA256 of the material, 300 000
/// rounds, salt `haloflow console session`.
fn slow_key(material: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(material, b"haloflow console session", 300_000, &mut key);
    key.to_vec()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    type HmacSha256 = hmac::Hmac<sha2::Sha256>;
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The session format of the contract, signed with `key` as another node would.
fn signed_with(key: &[u8], expires_at_ms: i64, nonce: &str) -> String {
    let signed = format!("v1.{expires_at_ms}.{nonce}");
    let hex: String = hmac_sha256(key, signed.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("haloflow_session={signed}.{hex}")
}

/// A session signed as another node with the same secrets would.
fn signed_session(expires_at_ms: i64, nonce: &str, token: &str) -> String {
    static KEYS: std::sync::Mutex<Vec<(String, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap();
    if !keys.iter().any(|(t, _)| t == token) {
        keys.push((token.to_owned(), slow_key(&credentials_material(token))));
    }
    let key = &keys.iter().find(|(t, _)| t == token).unwrap().1;
    signed_with(key, expires_at_ms, nonce)
}

/// One cookie lets nobody test password guesses at HMAC speed: the key comes from a slow KDF,
/// and a key from the old fast derivation is refused.
#[tokio::test]
async fn the_session_key_comes_from_a_slow_kdf() {
    let h = start(with_credentials).await;
    let runs = format!("{}/api/runs", h.base);
    let later = haloflow::internals::storage::now_ms() + 60_000;
    let fast = hmac_sha256(
        &credentials_material(API_TOKEN),
        b"haloflow console session",
    );
    let (status, _) = get_with_cookie(&runs, &signed_with(&fast, later, "abc")).await;
    assert_eq!(status, 401, "a key derived at HMAC speed");
    let (status, body) = get_with_cookie(&runs, &signed_session(later, "abc", API_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
}

fn with_session_secret(config: &mut Config) {
    with_credentials(config);
    config.server.api.session_secret_name = Some("HALOFLOW_SESSION_SECRET".into());
}

/// With `session_secret_name`, sessions are signed with that shared secret (every node with it
/// accepts them), no longer with the credentials.
#[tokio::test]
async fn a_shared_session_secret_signs_the_sessions_instead() {
    let h = start(with_session_secret).await;
    let runs = format!("{}/api/runs", h.base);
    let later = haloflow::internals::storage::now_ms() + 60_000;
    let shared = slow_key(&material(&["session", crate::common::SESSION_SECRET]));
    let (status, body) = get_with_cookie(&runs, &signed_with(&shared, later, "n1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get_with_cookie(&runs, &signed_session(later, "n1", API_TOKEN)).await;
    assert_eq!(status, 401, "the credentials no longer sign sessions");
    let signed_in = sign_in(&h.base, &[("token", API_TOKEN)]).await;
    let cookie = session_cookie(signed_in.headers());
    assert_eq!(get_with_cookie(&runs, &cookie).await.0, 200);
}

#[tokio::test]
async fn forged_and_expired_cookies_are_refused_and_headers_work_as_before() {
    let h = start(with_credentials).await;
    let runs = format!("{}/api/runs", h.base);
    let later = haloflow::internals::storage::now_ms() + 60_000;
    let valid = signed_session(later, "abc", API_TOKEN);
    assert_eq!(
        get_with_cookie(&runs, &valid).await.0,
        200,
        "the documented format"
    );
    for refused in [
        signed_session(haloflow::internals::storage::now_ms() - 1, "abc", API_TOKEN),
        signed_session(later, "abc", "another-token"),
        valid.replace(".abc.", ".abd."),
        "haloflow_session=v1.99999999999999.abc.00".to_owned(),
        "haloflow_session=".to_owned(),
        "other=1".to_owned(),
    ] {
        let (status, body) = get_with_cookie(&runs, &refused).await;
        assert_eq!(status, 401, "{refused}: {body}");
        assert_eq!(body["error"]["code"], "invalid_auth");
    }
    let bearer = h
        .client
        .get(&runs)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let session: Value = h
        .client
        .get(format!("{}/api/session", h.base))
        .basic_auth("ops", Some(API_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        session,
        json!({"authenticated": true, "via": "credentials", "user": "ops",
               "csrf_token": null, "expires_at_ms": null})
    );
    // A client with credentials in its header needs no CSRF token.
    let failed = failed_run(&h).await;
    let replay = h
        .client
        .post(format!("{}/api/runs/{failed}/replay", h.base))
        .bearer_auth(API_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
}

#[tokio::test]
async fn sign_in_attempts_beyond_the_limit_are_refused() {
    let h = start(with_credentials).await;
    let wrong = [("username", "ops"), ("password", "guess")];
    for _ in 0..10 {
        assert_eq!(sign_in(&h.base, &wrong).await.status(), 401);
    }
    let limited = sign_in(&h.base, &[("username", "ops"), ("password", API_PASSWORD)]).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(!limited.headers().contains_key(SET_COOKIE));
    let metrics = h.metrics().await;
    for line in [
        "haloflow_rejected_requests_total{flow=\"api\",reason=\"invalid_auth\"} 10",
        "haloflow_rejected_requests_total{flow=\"api\",reason=\"rate_limited\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// A client whose connections come from `ip` (any 127.x address reaches the listeners).
fn client_at(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A 429 JSON answer with a `Retry-After` of at least a second.
async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status(), 429);
    let retry_after = header(response.headers(), "retry-after").parse::<u64>();
    assert!(retry_after.unwrap() >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
}

/// Guessing is limited by failures only, per client address, and shared by the sign-in form
/// and the API's `Authorization` and cookie checks: a user who signs in often is never locked
/// out, and a stranger's guesses lock out only the stranger's address.
#[tokio::test]
async fn failed_attempts_are_limited_per_address_and_successes_are_free() {
    let h = start(with_credentials).await;
    let right = [("username", "ops"), ("password", API_PASSWORD)];
    let user = client_at([127, 0, 0, 2]);
    let login = format!("{}/console/login", h.base);
    for _ in 0..12 {
        let response = user.post(&login).form(&right).send().await.unwrap();
        assert_eq!(response.status(), 303, "successes are not counted");
    }
    let runs = format!("{}/api/runs", h.base);
    let stranger = client_at([127, 0, 0, 3]);
    for i in 0..10 {
        let guess = stranger.get(&runs);
        let guess = if i % 2 == 0 {
            guess.bearer_auth("guess")
        } else {
            guess.header("Cookie", "haloflow_session=v1.99999999999999.abc.00")
        };
        assert_eq!(guess.send().await.unwrap().status(), 401);
    }
    let limited = stranger
        .get(&runs)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_rate_limited(limited).await; // even the right token, from the guessing address
    let form = stranger.post(&login).form(&right).send().await.unwrap();
    assert_eq!(form.status(), 429, "the sign-in form shares the limit");
    assert!(!form.headers().contains_key(SET_COOKIE));

    let elsewhere = user.get(&runs).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(elsewhere.status(), 200, "another address is not locked out");
    let signed_in = user.post(&login).form(&right).send().await.unwrap();
    assert_eq!(signed_in.status(), 303);
}

/// A browser may send several `haloflow_session` cookies (an old one for another path): any
/// that verifies lets it in.
#[tokio::test]
async fn any_session_cookie_that_verifies_is_accepted() {
    let h = start(with_credentials).await;
    let signed_in = sign_in(&h.base, &[("username", "ops"), ("password", API_PASSWORD)]).await;
    let cookie = session_cookie(signed_in.headers());
    let both = format!("haloflow_session=v1.1.stale.00; {cookie}");
    let (status, body) = get_with_cookie(&format!("{}/api/runs", h.base), &both).await;
    assert_eq!(status, 200, "{body}");
}

/// An expired session while the console polls must not make the browser ask for a password
/// in its own box: no Basic challenge for a request with the cookie or from a script.
#[tokio::test]
async fn a_401_to_the_console_carries_no_basic_challenge() {
    let h = start(with_credentials).await;
    let runs = format!("{}/api/runs", h.base);
    let challenge = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        header(response.headers(), "www-authenticate").to_owned()
    };
    let plain = challenge(h.client.get(&runs)).await;
    assert!(plain.contains("Basic"), "{plain}");
    for request in [
        h.client
            .get(&runs)
            .header("Cookie", "haloflow_session=v1.1.expired.00"),
        h.client.get(&runs).header("Sec-Fetch-Mode", "cors"),
    ] {
        let value = challenge(request).await;
        assert!(
            !value.contains("Basic") && value.contains("Bearer"),
            "{value}"
        );
    }
}

/// Signing out takes the session's CSRF token or the browser's word that the console's own
/// page sent it; another site's form cannot sign a user out.
#[tokio::test]
async fn another_site_cannot_sign_a_user_out() {
    let h = start(with_credentials).await;
    let signed_in = sign_in(&h.base, &[("username", "ops"), ("password", API_PASSWORD)]).await;
    let cookie = session_cookie(signed_in.headers());
    let logout = |headers: &[(&str, &str)]| {
        let mut request = browser().post(format!("{}/console/logout", h.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    for refused in [
        &[][..],
        &[("Cookie", cookie.as_str())][..],
        &[
            ("Cookie", cookie.as_str()),
            ("Origin", "https://evil.example"),
        ][..],
        &[
            ("Cookie", cookie.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
        ][..],
        &[("Origin", "null")][..],
    ] {
        let response = logout(refused).await.unwrap();
        assert_eq!(response.status(), 403, "{refused:?}");
        assert!(!response.headers().contains_key(SET_COOKIE), "{refused:?}");
    }
    for accepted in [
        &[("Sec-Fetch-Site", "same-origin")][..],
        &[("Cookie", cookie.as_str()), ("Origin", h.base.as_str())][..],
    ] {
        let response = logout(accepted).await.unwrap();
        assert_eq!(response.status(), 303, "{accepted:?}");
        assert!(header(response.headers(), "set-cookie").contains("Max-Age=0"));
    }
}

#[tokio::test]
async fn the_open_admin_listener_needs_no_sign_in_and_the_public_one_has_no_console() {
    let h = Harness::start().await;
    let login = browser()
        .get(format!("{}/console/login", h.api))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()[LOCATION], "/console/");
    let shell = browser()
        .get(format!("{}/console/", h.api))
        .send()
        .await
        .unwrap();
    assert_eq!(shell.status(), 200);
    assert_eq!(
        header(shell.headers(), "content-type"),
        "text/html; charset=utf-8"
    );
    let (status, session) = get_with_cookie(&format!("{}/api/session", h.api), "").await;
    assert_eq!(status, 200);
    assert_eq!(session["via"], "open");
    let public = browser()
        .get(format!("{}/console/", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn flows_show_their_trigger_nested_steps_and_runs_of_the_last_day() {
    let h = Harness::start().await;
    let failed = failed_run(&h).await;
    let (status, body) = get_with_cookie(&format!("{}/api/flows", h.api), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reload"], Value::Null, "no reload yet");
    let flow = |id: &str| {
        body["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .cloned()
            .unwrap()
    };
    let escalate = flow("escalate-to-partner");
    let trigger = &escalate["trigger"];
    assert_eq!(trigger["type"], "halo.incidents");
    assert_eq!(
        trigger["auth"],
        json!({"type": "url_key", "param": "apiKey"})
    );
    assert_eq!(trigger["recipients_separator"], "&");
    let url = trigger["url"].as_str().unwrap();
    assert!(
        url.ends_with("/triggers/escalate-to-partner?apiKey=<HALOFLOW_ESCALATE_KEY>"),
        "{url}"
    );
    assert!(!body.to_string().contains(crate::common::ESCALATE_KEY));
    assert_eq!(
        escalate["runs_24h"],
        json!({"queued": 0, "running": 0, "succeeded": 0, "failed": 1}),
        "{failed}"
    );
    let routing = flow("new-ticket-routing");
    assert_eq!(routing["trigger"]["auth"]["type"], "basic");
    assert_eq!(routing["trigger"]["recipients_separator"], "?");
    assert_eq!(routing["runs_24h"]["failed"], 0);

    let triage = flow("triage-by-agent");
    let top: Vec<&str> = (triage["steps"].as_array().unwrap().iter())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        top,
        ["assigned", "report"],
        "nested steps stay in their paths"
    );
    let assigned = &triage["steps"][0];
    assert_eq!(assigned["type"], "core.condition");
    assert_eq!(assigned["name"], "Is an agent assigned?");
    assert_eq!(assigned["paths"]["true"][0]["id"], "tell_agent");
    let by_priority = &assigned["paths"]["false"][0];
    assert_eq!(by_priority["paths"]["1"][0]["id"], "escalate");
    assert_eq!(triage["steps"][1]["paths"], Value::Null);
}

#[tokio::test]
async fn a_reload_is_reported_with_the_problems_that_kept_the_running_flows() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("flows").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let h = Harness::start_with(Options {
        flows: dir.path().to_owned(),
        ..Options::default()
    })
    .await;
    let reload = || async {
        let response = h
            .client
            .post(format!("{}/api/flows/reload", h.api))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    };
    let ok = reload().await;
    assert_eq!(
        (ok["ok"].clone(), ok["problems"].clone()),
        (json!(true), json!([]))
    );
    assert!(ok["at_ms"].as_i64().unwrap() > 0);
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"id": "broken", "name": "Broken", "trigger": {"type": "halo.incidents", "auth": {"type": "none"}}, "steps": [{"id": "x", "type": "no.such_step"}]}"#).unwrap();
    let refused = reload().await;
    assert_eq!(refused["ok"], false, "{refused}");
    let problems = refused["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    assert!(
        problems[0].as_str().unwrap().contains("broken.json"),
        "{refused}"
    );
    let (_, flows) = get_with_cookie(&format!("{}/api/flows", h.api), "").await;
    assert_eq!(flows["reload"], refused);
    assert_eq!(
        flows["flows"].as_array().unwrap().len(),
        6,
        "the running flows stay"
    );
}

#[tokio::test]
async fn trigger_setup_spells_out_the_url_auth_and_halo_webhooks_without_secrets() {
    let h = Harness::start().await;
    let setup = |path: &str| {
        let url = format!("{}/api/flows/{path}", h.api);
        async move { get_with_cookie(&url, "").await }
    };
    let (status, keyed) =
        setup("escalate-to-partner/setup?recipients=ops,Jane%20Doe&recipients=x").await;
    assert_eq!(status, 200, "{keyed}");
    assert_eq!(keyed["flow"], "escalate-to-partner");
    let url = keyed["trigger_url"].as_str().unwrap();
    assert!(
        url.ends_with("/triggers/escalate-to-partner?apiKey=<HALOFLOW_ESCALATE_KEY>&recipients=ops,Jane%20Doe,x"),
        "{url}"
    );
    let auth = &keyed["auth"];
    assert_eq!(auth["type"], "url_key");
    assert_eq!(auth["param"], "apiKey");
    assert_eq!(auth["secret_name"], "HALOFLOW_ESCALATE_KEY");
    assert!(auth["halo_setting"].as_str().unwrap().starts_with("None"));
    let webhooks = keyed["webhooks"].as_array().unwrap();
    let described: Vec<(&str, &str, &str)> = webhooks
        .iter()
        .map(|w| {
            assert_eq!(w["url"], url);
            assert_eq!(w["halo"]["webhook"]["url"], url);
            (
                w["route"].as_str().unwrap(),
                w["event"].as_str().unwrap(),
                w["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("assigned", "New Ticket Logged", "Agent is not Unassigned"),
            ("unassigned", "New Ticket Logged", "Agent is Unassigned"),
        ]
    );

    let (status, basic) = setup("new-ticket-routing/setup").await;
    assert_eq!(status, 200);
    assert!(
        basic["trigger_url"]
            .as_str()
            .unwrap()
            .ends_with("/triggers/new-ticket-routing")
    );
    assert_eq!(basic["auth"]["username"], "halo");
    assert_eq!(basic["auth"]["secret_name"], "HALOFLOW_ROUTING_PASSWORD");
    assert_eq!(basic["webhooks"][0]["authentication"], "Basic");
    assert_eq!(
        basic["webhooks"][0]["halo"]["webhook"]["basic_username"],
        "halo"
    );
    for body in [&keyed, &basic] {
        for secret in crate::common::all_secrets() {
            assert!(!body.to_string().contains(secret), "{secret} in {body}");
        }
    }
    let (status, missing) = setup("nope/setup").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "unknown_flow");
}

#[tokio::test]
async fn a_test_webhook_goes_through_the_trigger_path_and_starts_a_run() {
    let h = Harness::start().await;
    let test = |body: Value| {
        let request = h
            .client
            .post(format!("{}/api/flows/escalate-to-partner/test", h.api))
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, started) = test(json!({"recipients": ["ops", "Jane Doe"]})).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(
        (started["suppressed"].clone(), started["duplicates"].clone()),
        (json!(0), json!(0))
    );
    let run = h.wait(started["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status.as_str(), "succeeded", "{run:?}");
    assert_eq!(run.trigger["recipients"], json!(["ops", "Jane Doe"]));
    let (_, requests) = get_with_cookie(&format!("{}/api/requests", h.api), "").await;
    assert_eq!(
        requests["requests"][0]["id"], started["request_id"],
        "stored as a trigger request"
    );

    // The same ticket again: flood control applies as to any trigger request.
    let (status, again) = test(json!({})).await;
    assert_eq!(status, 202, "{again}");
    let handled =
        again["run_ids"].as_array().unwrap().len() as u64 + again["suppressed"].as_u64().unwrap();
    assert_eq!(handled, 1, "{again}");

    let mut own = sample_payload("halo-new-ticket-unassigned.json");
    own["id"] = json!(uuid::Uuid::new_v4().to_string());
    let (status, given) = test(json!({"payload": own})).await;
    assert_eq!(status, 202, "{given}");
    for (bad, code) in [
        (json!({"payload": {"x": 1}, "extra": 1}), "invalid_payload"),
        (json!({"recipients": "ops"}), "invalid_payload"),
        (json!({"payload": 7}), "invalid_payload"),
    ] {
        let (status, body) = test(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], code, "{bad}");
    }
    let missing = h
        .client
        .post(format!("{}/api/flows/nope/test", h.api))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// A test webhook is a trigger request: the trigger's rate limit applies to it, and the
/// history shows it was a test.
#[tokio::test]
async fn a_test_webhook_keeps_to_the_triggers_rate_limit_and_is_marked() {
    let flows = tempfile::tempdir().unwrap();
    let mut flow: Value =
        serde_json::from_str(&std::fs::read_to_string("flows/escalate-to-partner.json").unwrap())
            .unwrap();
    flow["trigger"]["rate_limit"] = json!({"requests": 1, "per_secs": 60});
    std::fs::write(flows.path().join("escalate.json"), flow.to_string()).unwrap();
    let h = Harness::start_with(Options {
        flows: flows.path().to_owned(),
        ..Options::default()
    })
    .await;
    let test = || {
        h.client
            .post(format!("{}/api/flows/escalate-to-partner/test", h.api))
            .json(&json!({}))
            .send()
    };
    let first = test().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_rate_limited(test().await.unwrap()).await;
    let (_, requests) = get_with_cookie(&format!("{}/api/requests", h.api), "").await;
    let stored = &requests["requests"][0];
    assert_eq!(stored["id"], first["request_id"]);
    assert_eq!(stored["query"]["params"]["test"], true, "{stored}");
    assert_eq!(requests["requests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn runs_and_requests_are_paged_by_cursor_with_verdicts() {
    use haloflow::storage::{NewRequest, NewRun};
    let h = Harness::start().await;
    for i in 0..5i64 {
        let request = NewRequest {
            id: format!("req-{i}"),
            flow_id: "paged".into(),
            received_at_ms: 1_000 + i,
            http_status: 202,
            error: None,
            query: None,
            body: Some("{}".into()),
            event_count: 1,
            outcome: None,
        };
        let run = NewRun {
            id: format!("run-{i}"),
            flow_id: "paged".into(),
            event_index: 0,
            trigger: json!({}),
            created_at_ms: 1_000 + i,
            correlation_key: None,
            delivery_id: None,
            owner: None,
            lease_until_ms: None,
        };
        h.engine
            .storage()
            .accept_request(&request, &[run], &[])
            .await
            .unwrap();
    }
    let get = |query: String| {
        let url = format!("{}/api/{query}", h.api);
        async move { get_with_cookie(&url, "").await }
    };
    let mut ids = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = get(format!("runs?flow=paged&limit=2{before}")).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].clone()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => before = format!("&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(ids, ["run-4", "run-3", "run-2", "run-1", "run-0"]);
    let (_, last) = get("runs?flow=paged&limit=5".into()).await;
    assert_eq!(
        last["next_cursor"],
        Value::Null,
        "no empty page after a full one"
    );
    let (_, first) = get("requests?flow=paged&limit=2&verdict=run".into()).await;
    assert_eq!(first["requests"][0]["verdict"], "run");
    assert_eq!(first["next_cursor"], "1003.req-3");
    let (_, rest) = get("requests?flow=paged&before=1003.req-3&until=1002".into()).await;
    let rest: Vec<&Value> = rest["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(rest, [&json!("req-1"), &json!("req-0")]);
    let (_, of_request) = get("runs?request=req-2".into()).await;
    assert_eq!(of_request["runs"][0]["id"], "run-2");
    for bad in [
        "runs?before=yesterday",
        "requests?verdict=maybe",
        "requests?since=soon",
    ] {
        let (status, body) = get(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query");
    }
}
