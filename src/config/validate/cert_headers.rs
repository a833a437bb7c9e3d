//! `listeners[].client_cert_headers`: `foreman`, `puppet`, or explicit header names.

use super::Validator;
use crate::config::types::{CertFormat, CertHeaders};

const CHOICES: &str = "use foreman, puppet, or a map { verify: NAME, dn: NAME, cert: NAME, cert_format: flat|urlencoded }";

impl Validator {
    pub(super) fn cert_headers(&mut self, p: &str, v: Option<&serde_yaml::Value>) -> CertHeaders {
        use serde_yaml::Value;
        let Some(v) = v else {
            return CertHeaders::foreman();
        };
        match v {
            Value::String(s) if s == "foreman" => CertHeaders::foreman(),
            Value::String(s) if s == "puppet" => CertHeaders::puppet(),
            Value::Mapping(m) => {
                let mut out = CertHeaders {
                    verify: None,
                    dn: None,
                    cert: None,
                    cert_format: CertFormat::Flat,
                };
                for (k, val) in m {
                    let key = k.as_str().unwrap_or("");
                    let kp = format!("{p}.{key}");
                    let text = val.as_str().unwrap_or("");
                    match key {
                        "verify" | "dn" | "cert" => {
                            let Ok(name) = http::HeaderName::from_bytes(text.as_bytes()) else {
                                self.err(
                                    kp,
                                    format!("{val:?} is not a header name; write e.g. X-SSL-Client-DN"),
                                );
                                continue;
                            };
                            let slot = match key {
                                "verify" => &mut out.verify,
                                "dn" => &mut out.dn,
                                _ => &mut out.cert,
                            };
                            *slot = Some(name);
                        }
                        "cert_format" => match text {
                            "flat" => out.cert_format = CertFormat::Flat,
                            "urlencoded" => out.cert_format = CertFormat::UrlEncoded,
                            _ => self.err(
                                kp,
                                format!("{val:?} is not a choice; use flat (newlines as spaces) or urlencoded"),
                            ),
                        },
                        _ => self.err(kp, format!("{k:?} is not a key here; {CHOICES}")),
                    }
                }
                if out.names().next().is_none() {
                    self.err(p.to_string(), format!("names no header; {CHOICES}"));
                }
                out
            }
            other => {
                self.err(
                    p.to_string(),
                    format!("{other:?} is not a choice; {CHOICES}"),
                );
                CertHeaders::foreman()
            }
        }
    }
}
