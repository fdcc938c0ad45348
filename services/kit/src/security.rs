//! How sagashop's Kafka clients authenticate and encrypt: TLS (with the CA that signed the
//! brokers' certificates) and SASL PLAIN or SCRAM, from settings a Kubernetes Secret provides.

use std::path::PathBuf;

use rdkafka::ClientConfig;

use crate::error::Error;

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[clap(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (a private network only).
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS: credentials travel in clear (SCRAM only sends proofs).
    SaslPlaintext,
    /// SASL over TLS: the usual production setting.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `sasl.mechanisms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    /// Username and password as they are (use it only over TLS).
    #[value(name = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A password: never shown by `Debug` or in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// TLS and SASL settings. In Kubernetes they come from the chart's `kafka.security` values and
/// a Secret holding `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSecurity {
    /// How clients connect: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value_t = SecurityProtocol::Plaintext
    )]
    pub protocol: SecurityProtocol,
    /// The SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// The SASL password (prefer the environment, from a Secret, to the command line).
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Password>,
    /// A PEM file with the CA certificate(s) that signed the brokers' certificates (SSL and
    /// SASL_SSL); the system's CAs when unset.
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaSecurity {
    /// Checks that the settings fit together; the error names the setting to fix.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |setting, reason: &str| {
            Err(Error::InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        let protocol = self.protocol.as_str();
        if self.protocol.sasl() {
            if self.sasl_mechanism.is_none() {
                return invalid(
                    "KAFKA_SASL_MECHANISM",
                    &format!("{protocol} needs a mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
                );
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "KAFKA_SASL_USERNAME",
                    &format!("{protocol} needs a user name"),
                );
            }
            if self.sasl_password.as_ref().is_none_or(|p| p.0.is_empty()) {
                return invalid(
                    "KAFKA_SASL_PASSWORD",
                    &format!("{protocol} needs a password"),
                );
            }
        } else if let Some(mechanism) = self.sasl_mechanism {
            return invalid(
                "KAFKA_SASL_MECHANISM",
                &format!(
                    "{} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SASL_SSL or SASL_PLAINTEXT",
                    mechanism.as_str()
                ),
            );
        }
        if let Some(path) = &self.ssl_ca_location {
            if !matches!(
                self.protocol,
                SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
            ) {
                return invalid(
                    "KAFKA_SSL_CA_LOCATION",
                    &format!(
                        "it is set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
                    ),
                );
            }
            if let Err(e) = std::fs::metadata(path) {
                return invalid(
                    "KAFKA_SSL_CA_LOCATION",
                    &format!("cannot read {}: {e}", path.display()),
                );
            }
        }
        Ok(())
    }

    /// Writes the librdkafka properties.
    pub(crate) fn apply(&self, config: &mut ClientConfig) {
        if self.protocol == SecurityProtocol::Plaintext {
            return;
        }
        config.set("security.protocol", self.protocol.as_str());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanisms", mechanism.as_str());
        }
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", &password.0);
        }
        if let Some(path) = &self.ssl_ca_location {
            config.set("ssl.ca.location", path.to_string_lossy());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn sasl_ssl() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("sagashop".into()),
            sasl_password: Some(Password::new("s3cret")),
            ssl_ca_location: None,
        }
    }

    fn setting(security: &KafkaSecurity) -> &'static str {
        match security.validate().unwrap_err() {
            Error::InvalidConfig { setting, .. } => setting,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_a_password() {
        sasl_ssl().validate().unwrap();
        let mut s = sasl_ssl();
        s.sasl_mechanism = None;
        assert_eq!(setting(&s), "KAFKA_SASL_MECHANISM");
        let mut s = sasl_ssl();
        s.sasl_username = Some(String::new());
        assert_eq!(setting(&s), "KAFKA_SASL_USERNAME");
        let mut s = sasl_ssl();
        s.sasl_password = None;
        assert_eq!(setting(&s), "KAFKA_SASL_PASSWORD");
        let mut s = sasl_ssl();
        s.protocol = SecurityProtocol::Ssl;
        assert_eq!(setting(&s), "KAFKA_SASL_MECHANISM");
        let mut s = sasl_ssl();
        s.ssl_ca_location = Some("/no/such/ca.pem".into());
        assert_eq!(setting(&s), "KAFKA_SSL_CA_LOCATION");
    }

    #[test]
    fn the_password_reaches_librdkafka_but_never_debug_output() {
        let s = sasl_ssl();
        assert!(!format!("{s:?}").contains("s3cret"));
        let mut config = ClientConfig::new();
        s.apply(&mut config);
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
    }
}
