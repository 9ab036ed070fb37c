//! docs/openapi.json documents exactly the routes the API serves, each with the role
//! it needs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

#[test]
fn the_openapi_document_lists_exactly_the_routes_with_their_roles() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let documented: BTreeSet<(String, String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().unwrap().iter().map(move |(method, op)| {
                (
                    method.to_uppercase(),
                    path.clone(),
                    op["x-quorate-role"].as_str().unwrap_or("none").to_owned(),
                )
            })
        })
        .collect();
    let served: BTreeSet<(String, String, String)> = quorate_http::ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.role.as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, served);
}
