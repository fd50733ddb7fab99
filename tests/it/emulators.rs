//! The emulators answer like the real APIs and refuse what the real APIs refuse.

use haloflow_emulators::halo::HaloEmulator;
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use serde_json::{Value, json};

async fn halo() -> (
    HaloEmulator,
    haloflow_emulators::RunningEmulator,
    reqwest::Client,
) {
    let emulator = crate::common::halo_emulator();
    let running = emulator.start().await.unwrap();
    (emulator, running, reqwest::Client::new())
}

async fn token(client: &reqwest::Client, base: &str) -> String {
    let answer = crate::common::halo_token(client, base).await;
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 3600);
    answer["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn halo_tokens_tickets_and_actions() {
    let (emulator, running, client) = halo().await;
    let base = running.base_url();
    let wrong = client
        .post(format!("{base}/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "id"),
            ("client_secret", "nope"),
            ("scope", "all"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let token = token(&client, &base).await;
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}/api/{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    assert_eq!(
        client
            .post(format!("{base}/api/Tickets"))
            .json(&json!([{"summary": "s"}]))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post("Tickets", json!({"summary": "not an array"}))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("Tickets", json!([{"details": "no summary"}]))
            .await
            .unwrap()
            .status(),
        400
    );
    let created = post(
        "tickets",
        json!([{"summary": "Disk", "team": "Ops", "customfields": [{"id": 1, "value": "a"}]}]),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let ticket: Value = created.json().await.unwrap();
    let id = ticket["id"].as_i64().unwrap();
    assert_eq!(ticket["summary"], "Disk");
    let updated: Value = post(
        "Tickets",
        json!([{"id": id, "status_id": 9, "customfields": [{"id": 2, "value": "b"}]}]),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (
            updated["summary"].clone(),
            updated["team"].clone(),
            updated["status_id"].clone()
        ),
        (json!("Disk"), json!("Ops"), json!(9))
    );
    assert_eq!(
        updated["customfields"],
        json!([{"id": 1, "value": "a"}, {"id": 2, "value": "b"}])
    );
    assert_eq!(
        post("Tickets", json!([{"id": 99999, "status_id": 1}]))
            .await
            .unwrap()
            .status(),
        400
    );
    let got: Value = client
        .get(format!("{base}/api/Tickets/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status_id"], 9);

    let missing = post("Actions", json!([{"ticket_id": id, "note": "x"}]))
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["Message"],
        "An Outcome must be entered for this Action"
    );
    let action: Value = post(
        "Actions",
        json!([{"ticket_id": id, "outcome": "Note", "new_status": 2}]),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(action["ticket_id"], id);
    assert_eq!(emulator.ticket(id).unwrap()["status_id"], 2);
    let listed: Value = client
        .get(format!("{base}/api/Actions?ticket_id={id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["record_count"], 1);
    let text = client
        .post(format!("{base}/api/Tickets"))
        .bearer_auth(&token)
        .header("Content-Type", "text/plain")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);

    emulator.revoke_tokens();
    assert_eq!(
        post("Tickets", json!([{"summary": "s"}]))
            .await
            .unwrap()
            .status(),
        401
    );
    emulator.fail_next("POST", "/api/tickets", 429, 1, Some(7));
    let token = self::token(&client, &base).await;
    let limited = client
        .post(format!("{base}/api/Tickets"))
        .bearer_auth(&token)
        .json(&json!([{"summary": "s"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(emulator.tokens_issued(), 2);
    assert!(emulator.requests().iter().any(|r| r.status == 429));
}

async fn servicenow() -> (ServiceNowEmulator, String, reqwest::Client) {
    let emulator = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: "integration".into(),
        password: "pw".into(),
        oauth_client_id: Some("sn-client".into()),
        oauth_client_secret: Some("sn-secret".into()),
        token_lifetime_secs: 1800,
        oauth_user: "oauth.app".into(),
    });
    let running = emulator.start().await.unwrap();
    let base = running.base_url();
    std::mem::forget(running); // keep serving for the whole test process
    (emulator, base, reqwest::Client::new())
}

#[tokio::test]
async fn servicenow_table_api_journal_and_attachments() {
    let (emulator, base, client) = servicenow().await;
    let unauthenticated = client
        .get(format!("{base}/api/now/table/incident"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(
        unauthenticated.json::<Value>().await.unwrap()["status"],
        "failure"
    );
    let basic = |r: reqwest::RequestBuilder| {
        r.basic_auth("integration", Some("pw"))
            .header("Accept", "application/json")
    };

    let caller = emulator.insert_record(
        "sys_user",
        json!({"email": "jo@acme.example", "user_name": "jo"}),
    );
    let created = basic(client.post(format!("{base}/api/now/table/incident")))
        .json(&json!({"short_description": "Disk", "impact": 2, "caller_id": caller, "correlation_id": "halo-4242", "work_notes": "from Halo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let record: Value = created.json().await.unwrap();
    let incident = &record["result"];
    let sys_id = incident["sys_id"].as_str().unwrap().to_owned();
    assert_eq!(sys_id.len(), 32);
    assert!(location.ends_with(&sys_id));
    assert_eq!(incident["number"], "INC0010001");
    assert_eq!(
        (incident["impact"].clone(), incident["state"].clone()),
        (json!("2"), json!("1")),
        "values are strings, state New"
    );
    assert_eq!(incident["caller_id"]["value"], caller);
    assert_eq!(
        incident["work_notes"], "",
        "journal fields read back empty; their entries are in the journal"
    );

    let no_type = basic(client.patch(format!("{base}/api/now/table/incident/{sys_id}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
    let patched: Value = basic(client.patch(format!("{base}/api/now/v1/table/incident/{sys_id}")))
        .json(&json!({"comments": "public note"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["result"]["sys_mod_count"], "1");
    let journal = emulator.journal(&sys_id);
    assert_eq!(journal.len(), 2);
    assert_eq!(
        (journal[1]["element"].clone(), journal[1]["value"].clone()),
        (json!("comments"), json!("public note"))
    );
    assert_eq!(journal[0]["sys_created_by"], "integration");

    for i in 0..3 {
        basic(client.post(format!("{base}/api/now/table/incident")))
            .json(&json!({"short_description": format!("n{i}")}))
            .send()
            .await
            .unwrap();
    }
    let page = basic(client.get(format!(
        "{base}/api/now/table/incident?sysparm_query=short_descriptionSTARTSWITHn^ORDERBYDESCshort_description&sysparm_limit=2&sysparm_offset=0&sysparm_fields=short_description"
    )))
    .send()
    .await
    .unwrap();
    assert_eq!(page.headers()["x-total-count"], "3");
    let page: Value = page.json().await.unwrap();
    assert_eq!(
        page["result"],
        json!([{"short_description": "n2"}, {"short_description": "n1"}])
    );
    let by_correlation: Value = basic(client.get(format!(
        "{base}/api/now/table/incident?correlation_id=halo-4242&sysparm_exclude_reference_link=true"
    )))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(by_correlation["result"][0]["caller_id"], caller);
    let journal_url = format!(
        "{base}/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}^element=work_notes^ORelement=comments"
    );
    let notes: Value = basic(client.get(&journal_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        notes["result"],
        json!([]),
        "without audit_viewer the read ACL hides every row"
    );
    emulator.grant_role("integration", "audit_viewer");
    let notes: Value = basic(client.get(&journal_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(notes["result"].as_array().unwrap().len(), 2);

    let upload = basic(client.post(format!(
        "{base}/api/now/attachment/file?table_name=incident&table_sys_id={sys_id}&file_name=log.txt"
    )))
    .header("Content-Type", "text/plain")
    .body("hello")
    .send()
    .await
    .unwrap();
    assert_eq!(upload.status(), 201);
    let meta: Value = upload.json().await.unwrap();
    assert_eq!(
        (
            meta["result"]["size_bytes"].clone(),
            meta["result"]["file_name"].clone()
        ),
        (json!("5"), json!("log.txt"))
    );
    let listed: Value = basic(client.get(format!(
        "{base}/api/now/attachment?sysparm_query=table_sys_id={sys_id}"
    )))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(listed["result"].as_array().unwrap().len(), 1);
    let missing = basic(client.post(format!(
        "{base}/api/now/attachment/file?table_name=incident&table_sys_id=nope&file_name=a"
    )))
    .header("Content-Type", "text/plain")
    .body("x")
    .send()
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(emulator.attachments().len(), 1);
}

#[tokio::test]
async fn servicenow_oauth_and_injected_failures() {
    let (emulator, base, client) = servicenow().await;
    let json_body = client
        .post(format!("{base}/oauth_token.do"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_body.status(),
        400,
        "the token endpoint takes a form, not JSON"
    );
    let token: Value = client
        .post(format!("{base}/oauth_token.do"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sn-client"),
            ("client_secret", "sn-secret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["expires_in"], 1800);
    let bearer = token["access_token"].as_str().unwrap();
    emulator.fail_next("POST", "/api/now/table/incident", 503, 1, Some(3));
    let create = || {
        client
            .post(format!("{base}/api/now/table/incident"))
            .bearer_auth(bearer)
            .json(&json!({"short_description": "x"}))
            .send()
    };
    let failed = create().await.unwrap();
    assert_eq!(
        (
            failed.status().as_u16(),
            failed.headers()["retry-after"].to_str().unwrap().to_owned()
        ),
        (503, "3".to_owned())
    );
    assert_eq!(create().await.unwrap().status(), 201);
    assert_eq!(emulator.records("incident").len(), 1);
    assert_eq!(
        emulator.records("incident")[0]["sys_created_by"],
        "oauth.app",
        "a token acts as the OAuth application user"
    );
    let long = client
        .post(format!("{base}/api/now/table/incident"))
        .bearer_auth(bearer)
        .json(&json!({"correlation_id": "x".repeat(101)}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        long.status(),
        400,
        "correlation_id holds at most 100 characters"
    );
}

#[tokio::test]
async fn servicenow_acts_like_an_instance() {
    let (emulator, base, client) = servicenow().await;
    let basic = |r: reqwest::RequestBuilder| {
        r.basic_auth("integration", Some("pw"))
            .header("Accept", "application/json")
    };
    // Unknown and system fields are dropped silently, with 201 (§7.2), and noted.
    let created = basic(client.post(format!("{base}/api/now/table/incident")))
        .json(
            &json!({"short_description": "Disk", "u_vendor": "x", "sys_created_by": "me",
                      "impact": "1", "urgency": "2", "priority": "5"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let incident: Value = created.json().await.unwrap();
    let incident = &incident["result"];
    assert!(incident.get("u_vendor").is_none());
    assert_eq!(incident["sys_created_by"], "integration");
    assert_eq!(
        incident["priority"], "2",
        "calculatePriority: impact 1, urgency 2"
    );
    let warnings = emulator.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("incident.u_vendor") || warnings[1].contains("incident.u_vendor"));
    // A customer's field, once in the dictionary, is kept.
    emulator.add_field("incident", "u_vendor");
    let sys_id = incident["sys_id"].as_str().unwrap();
    let patched = json_of(
        basic(client.patch(format!("{base}/api/now/table/incident/{sys_id}")))
            .json(&json!({"u_vendor": "acme", "urgency": "3"})),
    )
    .await;
    assert_eq!(patched["result"]["u_vendor"], "acme");
    assert_eq!(patched["result"]["priority"], "3", "recalculated on update");
    // An invalid part of a query is ignored, the rest applied (§1.2).
    let task = emulator.insert_record("sc_task", json!({"short_description": "Other"}));
    let list = |query: &str| {
        basic(client.get(format!(
            "{base}/api/now/table/{query}&sysparm_fields=sys_id,sys_class_name"
        )))
    };
    let found = json_of(list(
        "incident?sysparm_query=short_descripton=nope^short_description=Disk",
    ))
    .await;
    assert_eq!(found["result"].as_array().unwrap().len(), 1, "{found}");
    // `task` reads return the child tables' records with their class.
    let tasks = json_of(list("task?sysparm_query=ORDERBYnumber")).await;
    let classes: Vec<&str> = tasks["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sys_class_name"].as_str().unwrap())
        .collect();
    assert_eq!(classes, ["incident", "sc_task"]);
    let one = basic(client.get(format!("{base}/api/now/table/task/{task}")))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    // Journal fields as display values (§4.2 Option B), in the user's time zone.
    emulator.insert_record(
        "sys_user",
        json!({"user_name": "abel.tuter", "name": "Abel Tuter"}),
    );
    emulator.update_as(
        "abel.tuter",
        "incident",
        sys_id,
        json!({"work_notes": "First"}),
    );
    emulator.update_as(
        "abel.tuter",
        "incident",
        sys_id,
        json!({"work_notes": "Second"}),
    );
    emulator.set_time_zone_offset(60);
    let shown = json_of(basic(client.get(format!(
        "{base}/api/now/table/incident/{sys_id}?sysparm_display_value=all&sysparm_fields=work_notes,sys_updated_on"
    )))).await;
    let notes = shown["result"]["work_notes"]["display_value"]
        .as_str()
        .unwrap();
    let entries: Vec<&str> = notes.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(entries.len(), 2, "{notes:?}");
    assert!(
        entries[0].ends_with(" - Abel Tuter (Work notes)\nSecond"),
        "{notes:?}"
    );
    assert!(
        entries[1].ends_with("(Work notes)\nFirst"),
        "newest first: {notes:?}"
    );
    assert_eq!(shown["result"]["work_notes"]["value"], "");
    let updated = &shown["result"]["sys_updated_on"];
    assert_ne!(updated["value"], updated["display_value"], "an hour apart");
    // Unknown tables are refused.
    let unknown = basic(client.get(format!("{base}/api/now/table/u_nothing")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}
