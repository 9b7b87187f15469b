//! Execution input: the default shape a deployment pipeline expects, or a pipeline's
//! own template with `.$` JSONPath keys rendered against that shape.

use serde_json::{Map, Value};
use serde_json_path::JsonPath;

/// Commit messages are written by whoever can push; only this much of one reaches a
/// pipeline.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A compiled `input_template`.
#[derive(Debug, Clone)]
pub enum Template {
    Literal(Value),
    /// A key that ended in `.$`: its value is the JSONPath's result.
    Path(Box<JsonPath>),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

impl Template {
    /// Compiles a template; errors are `(key path, message)` pairs.
    pub fn compile(template: &Map<String, Value>) -> Result<Template, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let compiled = compile_object(template, "input_template", &mut errors);
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    /// Renders against the default input. A path that selects nothing gives `null`, one
    /// that selects several nodes gives an array of them.
    pub fn render(&self, context: &Value) -> Value {
        match self {
            Template::Literal(value) => value.clone(),
            Template::Path(path) => {
                let nodes = path.query(context).all();
                match nodes.as_slice() {
                    [] => Value::Null,
                    [single] => (*single).clone(),
                    several => Value::Array(several.iter().map(|node| (*node).clone()).collect()),
                }
            }
            Template::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, template)| (key.clone(), template.render(context)))
                    .collect(),
            ),
            Template::Array(items) => {
                Value::Array(items.iter().map(|item| item.render(context)).collect())
            }
        }
    }
}

fn compile_object(
    object: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<(String, String)>,
) -> Template {
    let mut entries = Vec::with_capacity(object.len());
    for (key, value) in object {
        let key_path = format!("{path}.{key}");
        if let Some(output_key) = key.strip_suffix(".$") {
            match value {
                Value::String(text) => match JsonPath::parse(text) {
                    Ok(json_path) => {
                        entries.push((output_key.to_string(), Template::Path(Box::new(json_path))))
                    }
                    Err(error) => errors.push((
                        key_path,
                        format!("{text:?} is not a valid JSONPath: {error}"),
                    )),
                },
                _ => errors.push((
                    key_path,
                    "a key ending in .$ takes a JSONPath string".into(),
                )),
            }
        } else {
            entries.push((key.clone(), compile_value(value, &key_path, errors)));
        }
    }
    Template::Object(entries)
}

fn compile_value(value: &Value, path: &str, errors: &mut Vec<(String, String)>) -> Template {
    match value {
        Value::Object(object) => compile_object(object, path, errors),
        Value::Array(items) => Template::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| compile_value(item, &format!("{path}[{index}]"), errors))
                .collect(),
        ),
        other => Template::Literal(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dollar_keys_take_paths_and_other_keys_stay() {
        let template: Map<String, Value> = serde_json::from_value(json!({
            "Comment": "fixed",
            "env.$": "$.environment",
            "nested": {"sha.$": "$.git.commit", "list": [{"b.$": "$.override_branches[*].branch"}]},
            "missing.$": "$.git.pull_request.number"
        }))
        .unwrap();
        let compiled = Template::compile(&template).unwrap();
        let context = json!({
            "environment": "acceptance",
            "override_branches": [{"project": "a", "branch": "x"}, {"project": "b", "branch": "y"}],
            "git": {"commit": "abc", "pull_request": null}
        });
        assert_eq!(
            compiled.render(&context),
            json!({
                "Comment": "fixed",
                "env": "acceptance",
                "nested": {"sha": "abc", "list": [{"b": ["x", "y"]}]},
                "missing": null
            })
        );
    }

    #[test]
    fn bad_paths_are_reported_with_their_key() {
        let template: Map<String, Value> =
            serde_json::from_value(json!({"a.$": "not a path", "b": {"c.$": 3}})).unwrap();
        let errors = Template::compile(&template).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, vec!["input_template.a.$", "input_template.b.c.$"]);
    }
}
