//! Power through a DMTF Redfish BMC over HTTPS: the computer system's `PowerState`, and its
//! `ComputerSystem.Reset` action (DSP0266, DSP8010 `ComputerSystem` schema). HTTP basic
//! authentication on every request (no session to leak or expire); the certificate is checked
//! against the inventory's `ca` unless it says `verify = false`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::power::BmcAction;
use crate::inventory::Bmc;
use crate::secrets::BmcLogin;

/// The `ResetType` asked for each action (the Redfish `ResetType` enumeration).
fn reset_type(action: BmcAction) -> Option<&'static str> {
    match action {
        BmcAction::On => Some("On"),
        BmcAction::Soft => Some("GracefulShutdown"),
        BmcAction::Off => Some("ForceOff"),
        BmcAction::Reset => Some("ForceRestart"),
        BmcAction::Status => None,
    }
}

/// One BMC's Redfish service.
struct Service {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

impl Service {
    fn new(bmc: &Bmc, login: &BmcLogin, timeout: Duration) -> Result<Service, String> {
        let mut tls = ureq::tls::TlsConfig::builder().disable_verification(!bmc.verify);
        if let Some(ca) = &bmc.ca {
            let pem = std::fs::read(ca).map_err(|e| {
                format!(
                    "reading the BMC's certificate {}: {e} (bmc.ca in the inventory)",
                    ca.display()
                )
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "{} holds no PEM certificate (bmc.ca must be the BMC's certificate or its CA's)",
                    ca.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // A redirect stays on the BMC: the login goes with it there and nowhere else.
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build()
            .into();
        let host = if bmc.address.contains(':') {
            format!("[{}]", bmc.address)
        } else {
            bmc.address.clone()
        };
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", login.username, login.password));
        Ok(Service {
            agent,
            base: format!("https://{host}:{}", bmc.port()),
            authorization: format!("Basic {token}"),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request's answer: the status and the JSON body (null when there is none).
    fn answer(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Value), String> {
        let mut r = r.map_err(|e| {
            let text = e.to_string();
            // rustls' refusals arrive as I/O errors that name the certificate.
            let tls = matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
                || text.contains("certificate")
                || text.to_ascii_lowercase().contains("tls");
            if tls {
                format!(
                    "{what}: TLS: {text} (the BMC's certificate did not verify: give it, or its \
                     CA's, as bmc.ca in the inventory)"
                )
            } else {
                format!("{what}: {text} (is the BMC at {} up?)", self.base)
            }
        })?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .with_config()
            .limit(4 << 20)
            .read_to_string()
            .unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status == 401 || status == 403 {
            return Err(format!(
                "{what}: HTTP {status}: the BMC refused the login (check [bmc.NODE] in secrets.toml)"
            ));
        }
        if !(200..300).contains(&status) {
            return Err(format!("{what}: HTTP {status}{}", message(&body)));
        }
        Ok((status, body))
    }

    /// A GET, tried again (after 1 s, then 2 s) when the BMC answers with a server error: BMCs
    /// busy with another request say 500 or 503 for a moment (sushy-tools' emulator does, with
    /// "database is locked", when two systems are read at once). A GET changes nothing, so
    /// asking again is safe; actions are never repeated.
    fn get(&self, path: &str) -> Result<Value, String> {
        let url = self.url(path);
        let mut tries = 0;
        loop {
            let r = self
                .agent
                .get(&url)
                .header("Authorization", &self.authorization)
                .header("Accept", "application/json")
                .call();
            tries += 1;
            let busy = r.as_ref().is_ok_and(|r| r.status().is_server_error());
            if busy && tries < 3 {
                std::thread::sleep(Duration::from_secs(tries));
                continue;
            }
            return self.answer(&format!("GET {url}"), r).map(|(_, b)| b);
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<u16, String> {
        let url = self.url(path);
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(body.to_string());
        self.answer(&format!("POST {url}"), r).map(|(s, _)| s)
    }

    /// The computer system: the inventory's `system`, else the only member of
    /// `/redfish/v1/Systems`. Its document, and its own path.
    fn system(&self, named: Option<&str>) -> Result<(String, Value), String> {
        let path = match named {
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(id) => format!("/redfish/v1/Systems/{id}"),
            None => {
                let list = self.get("/redfish/v1/Systems")?;
                let members: Vec<&str> = list["Members"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|m| m["@odata.id"].as_str()).collect())
                    .unwrap_or_default();
                match members.as_slice() {
                    [one] => one.to_string(),
                    [] => return Err(format!("{}/redfish/v1/Systems lists no system", self.base)),
                    many => {
                        return Err(format!(
                            "the BMC at {} has {} systems ({}): name one as bmc.system in the inventory",
                            self.base,
                            many.len(),
                            many.join(", ")
                        ));
                    }
                }
            }
        };
        let doc = self.get(&path)?;
        // A name may redirect to the system's own path; act on that one.
        let own = doc["@odata.id"].as_str().unwrap_or(&path).to_string();
        Ok((own, doc))
    }
}

/// The error message in a Redfish error body (`error.@Message.ExtendedInfo[].Message`, else
/// `error.message`), after ": ".
fn message(body: &Value) -> String {
    let e = &body["error"];
    let extended: Vec<&str> = e["@Message.ExtendedInfo"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["Message"].as_str()).collect())
        .unwrap_or_default();
    let text = if extended.is_empty() {
        e["message"].as_str().unwrap_or_default().to_string()
    } else {
        extended.join("; ")
    };
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

/// The power state in a Redfish answer's words ("PowerState On").
pub fn parse_status(said: &str) -> Option<bool> {
    let state = said
        .split("PowerState ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    match state {
        "On" | "PoweringOff" => Some(true),
        "Off" | "PoweringOn" => Some(false),
        _ => None,
    }
}

/// Runs `action` on the Redfish BMC `bmc` (blocking; the caller runs it off the reactor).
pub fn act(
    bmc: &Bmc,
    login: &BmcLogin,
    action: BmcAction,
    timeout: Duration,
) -> Result<String, String> {
    let service = Service::new(bmc, login, timeout)?;
    let (path, doc) = service.system(bmc.system.as_deref())?;
    let state = doc["PowerState"].as_str().unwrap_or("unknown").to_string();
    let Some(reset) = reset_type(action) else {
        return Ok(format!("{path}: PowerState {state}"));
    };
    if reset == "On" && state == "On" {
        return Ok(format!("{path}: PowerState On already, nothing to do"));
    }
    if (reset == "GracefulShutdown" || reset == "ForceOff") && state == "Off" {
        return Ok(format!("{path}: PowerState Off already, nothing to do"));
    }
    let action_doc = &doc["Actions"]["#ComputerSystem.Reset"];
    let target = action_doc["target"].as_str().ok_or_else(|| {
        format!("{path} has no #ComputerSystem.Reset action: this BMC cannot switch its power")
    })?;
    if let Some(allowed) = action_doc["ResetType@Redfish.AllowableValues"].as_array() {
        let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
        if !allowed.contains(&reset) {
            return Err(format!(
                "{path} does not offer ResetType {reset} (it offers {})",
                allowed.join(", ")
            ));
        }
    }
    let status = service.post(target, &json!({ "ResetType": reset }))?;
    Ok(format!(
        "{path}: ResetType {reset} accepted (HTTP {status}; PowerState was {state})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_states_and_error_bodies_are_read() {
        assert_eq!(
            parse_status("/redfish/v1/Systems/1: PowerState On"),
            Some(true)
        );
        assert_eq!(
            parse_status("/x: PowerState Off already, nothing to do"),
            Some(false)
        );
        assert_eq!(parse_status("/x: PowerState Paused"), None);
        assert_eq!(parse_status("ipmitool said something"), None);
        let body = json!({"error": {"code": "Base.1.0.GeneralError", "message": "General",
            "@Message.ExtendedInfo": [{"Message": "ResetType Nmi is not supported"}]}});
        assert_eq!(message(&body), ": ResetType Nmi is not supported");
        assert_eq!(message(&json!({"error": {"message": "x"}})), ": x");
        assert_eq!(message(&Value::Null), "");
    }
}
