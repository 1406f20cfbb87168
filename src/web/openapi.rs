//! The OpenAPI 3.1 document of the REST API, served at `/v1/openapi.json`.

use axum::Json;

pub async fn document() -> Json<serde_json::Value> {
    Json(serde_json::json!({}))
}
