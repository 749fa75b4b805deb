//! The API reference page, rendered on the server from the OpenAPI document: plain HTML and one inline style, no
//! script and nothing fetched from anywhere, so it works on an air-gapped network (Swagger UI, Redoc and Scalar
//! all load JavaScript from a CDN or download it at build time). See ADR 0009.

use std::fmt::Write as _;

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// HTML-escapes text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A short description of a schema: a link to a named schema, `[T]` for arrays, else its type.
fn schema_name(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", esc(name));
    }
    if let Some(items) = schema.get("items") {
        return format!("[{}]", schema_name(items));
    }
    for combinator in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema.get(combinator).and_then(Value::as_array) {
            return list.iter().map(schema_name).collect::<Vec<_>>().join(" | ");
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) => esc(t),
        Some(Value::Array(types)) => esc(&types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | ")),
        _ => "object".to_owned(),
    }
}

fn text(value: &Value, key: &str) -> String {
    esc(value.get(key).and_then(Value::as_str).unwrap_or(""))
}

fn render_operation(out: &mut String, method: &str, path: &str, op: &Value) {
    let id = format!("{method}-{path}").replace(['/', '{', '}'], "_");
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{id}\"><h3><span class=\"m {method}\">{}</span> <code>{}</code></h3>",
        method.to_uppercase(),
        esc(path)
    );
    let _ = write!(out, "<p>{}</p>", text(op, "description"));
    if let Some(security) = op.get("security").and_then(Value::as_array) {
        let schemes: Vec<String> =
            security.iter().filter_map(Value::as_object).flat_map(|o| o.keys().map(|k| esc(k))).collect();
        let _ = write!(out, "<p class=\"sec\">Authentication: {}</p>", schemes.join(" or "));
    }
    if let Some(params) = op.get("parameters").and_then(Value::as_array) {
        out.push_str("<table><tr><th>Parameter</th><th>In</th><th>Type</th><th>Description</th></tr>");
        for param in params {
            let required = if param.get("required").and_then(Value::as_bool) == Some(true) { " *" } else { "" };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{required}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(param, "name"),
                text(param, "in"),
                param.get("schema").map(schema_name).unwrap_or_default(),
                text(param, "description"),
            );
        }
        out.push_str("</table>");
    }
    if let Some(body) = op.pointer("/requestBody/content/application~1json/schema") {
        let _ = write!(out, "<p>Request body (JSON): {}</p>", schema_name(body));
    }
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        out.push_str("<table><tr><th>Status</th><th>Description</th><th>Body</th></tr>");
        for (status, response) in responses {
            let body = response.pointer("/content/application~1json/schema").map(schema_name).unwrap_or_default();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{body}</td></tr>",
                esc(status),
                text(response, "description")
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn render_schema(out: &mut String, name: &str, schema: &Value) {
    let _ = write!(out, "<section class=\"schema\" id=\"schema-{0}\"><h3>{0}</h3>", esc(name));
    let _ = write!(out, "<p>{}</p>", text(schema, "description"));
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        out.push_str("<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>");
        for (field, property) in properties {
            let mark = if required.contains(&field.as_str()) { " *" } else { "" };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{mark}</td><td>{}</td><td>{}</td></tr>",
                esc(field),
                schema_name(property),
                text(property, "description"),
            );
        }
        out.push_str("</table>");
    } else if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("<code>{}</code>", esc(&v.to_string()))).collect();
        let _ = write!(out, "<p>One of: {}</p>", values.join(", "));
    }
    out.push_str("</section>");
}

/// Renders the reference page for `doc`.
pub fn render(doc: &utoipa::openapi::OpenApi) -> String {
    let doc = serde_json::to_value(doc).unwrap_or(Value::Null);
    let mut out = String::with_capacity(64 * 1024);
    let title = esc(doc.pointer("/info/title").and_then(Value::as_str).unwrap_or("API reference"));
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>\
         body{{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#1b1f24}}\
         table{{border-collapse:collapse;width:100%;margin:.5em 0}}td,th{{border:1px solid #d0d7de;padding:.3em .5em;\
         text-align:left;vertical-align:top}}code{{font-size:90%}}.op,.schema{{border-top:1px solid #d0d7de;\
         padding-top:.5em}}.m{{font-weight:700;padding:.1em .4em;border-radius:3px;color:#fff;background:#57606a}}\
         .get{{background:#0969da}}.post{{background:#1a7f37}}.delete{{background:#cf222e}}.sec{{color:#57606a}}\
         </style></head><body><h1>{title}</h1><p>{}</p><p>Machine-readable: \
         <a href=\"/api/v1/openapi.json\">openapi.json</a>. Fields marked * are required.</p>",
        esc(doc.pointer("/info/description").and_then(Value::as_str).unwrap_or(""))
    );
    let paths = doc.get("paths").and_then(Value::as_object);
    let mut by_tag: Vec<(String, String, &str, &Value)> = Vec::new();
    for (path, item) in paths.into_iter().flatten() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let tag = op.pointer("/tags/0").and_then(Value::as_str).unwrap_or("other").to_owned();
                by_tag.push((tag, path.clone(), method, op));
            }
        }
    }
    by_tag.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut current = None;
    for (tag, path, method, op) in &by_tag {
        if current != Some(tag) {
            let description = doc
                .get("tags")
                .and_then(Value::as_array)
                .and_then(|tags| tags.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(tag)))
                .map(|t| text(t, "description"))
                .unwrap_or_default();
            let _ = write!(out, "<h2>{}</h2><p>{description}</p>", esc(tag));
            current = Some(tag);
        }
        render_operation(&mut out, method, path, op);
    }
    out.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = doc.pointer("/components/schemas").and_then(Value::as_object) {
        for (name, schema) in schemas {
            render_schema(&mut out, name, schema);
        }
    }
    out.push_str("</body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_it_prints() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(
            schema_name(&serde_json::json!({"$ref": "#/components/schemas/X<"})),
            "<a href=\"#schema-X&lt;\">X&lt;</a>"
        );
        assert_eq!(schema_name(&serde_json::json!({"type": "array", "items": {"type": "string"}})), "[string]");
    }
}
