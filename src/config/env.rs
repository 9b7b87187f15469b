//! `${NAME}` references in every string of the file, replaced by the environment's
//! values before anything is decoded.

use super::Problem;

/// Replaces `${NAME}` in every string with the environment variable's value (`$$`
/// stands for a literal `$`), recording every variable that is not set.
pub(super) fn interpolate(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(text) if text.contains('$') => match interpolate_str(text, env) {
            Ok(replaced) => *text = replaced,
            Err(message) => problems.push(Problem::new(path.clone(), message)),
        },
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                interpolate(item, path, env, problems);
                path.truncate(length);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                interpolate(item, path, env, problems);
                path.truncate(length);
            }
        }
        _ => {}
    }
}

pub(super) fn interpolate_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        output.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            output.push('$');
            rest = after_dollar;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("has an unclosed ${ reference".to_string());
            };
            let name = &body[..end];
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
            if !valid_name {
                return Err(format!(
                    "${{{name}}} is not a valid environment variable reference"
                ));
            }
            match env(name) {
                Some(value) => output.push_str(&value),
                None => missing.push(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            output.push('$');
            rest = after;
        }
    }
    output.push_str(rest);
    if missing.is_empty() {
        Ok(output)
    } else {
        Err(format!(
            "environment variable {} is not set",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".to_string()),
            _ => None,
        }
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(
            interpolate_str("a$$b${SECRET}$", &env).unwrap(),
            "a$bs3cr3t$"
        );
        assert!(interpolate_str("${", &env).is_err());
        assert!(interpolate_str("${A-B}", &env).is_err());
    }
}
