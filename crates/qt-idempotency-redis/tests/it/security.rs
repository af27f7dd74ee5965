//! Credentials stay out of errors and `Debug`; passwords, ACL users and TLS work; plaintext
//! is refused when TLS is required.

use std::time::Duration;

use qt_core::config::RedisStoreConfig;
use qt_core::{Claim, ClaimState, Health, IdempotencyKey, IdempotencyStore, Secret, StoreError};
use qt_idempotency_redis::RedisStore;

use crate::support::{PrivateRedis, TestCerts, bounded, raw, test_config};

const LEASE: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(60);

fn assert_no_secret(texts: &[String], secrets: &[&str]) {
    for text in texts {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
        }
    }
}

fn printed(err: &StoreError) -> Vec<String> {
    vec![err.to_string(), format!("{err:?}")]
}

#[tokio::test]
async fn require_tls_refuses_plaintext_naming_the_field() {
    let cfg = RedisStoreConfig::new("redis://user:tls-needed-pw@127.0.0.1:6379");
    let err = RedisStore::connect(&cfg, "idem", true).await.expect_err("plaintext");
    let text = err.to_string();
    assert!(text.contains("idempotency.store.url"), "{text}");
    assert!(text.contains("security.require_tls"), "{text}");
    assert_no_secret(&printed(&err), &["tls-needed-pw"]);
}

#[tokio::test]
async fn every_configuration_problem_is_reported_at_once() {
    let mut cfg = RedisStoreConfig::new("redis://127.0.0.1:6379");
    cfg.pool_size = 0;
    cfg.command_timeout = Duration::ZERO;
    let err = RedisStore::connect(&cfg, "has space", false)
        .await
        .expect_err("invalid");
    let text = err.to_string();
    for expected in [
        "idempotency.store.pool_size",
        "idempotency.store.command_timeout",
        "idempotency.key_prefix",
    ] {
        assert!(text.contains(expected), "missing {expected} in {text}");
    }
}

#[tokio::test]
async fn a_url_password_never_shows_in_errors() {
    let mut server = PrivateRedis::start();
    let port = server.port();
    server.kill();
    let mut cfg = test_config(&format!("redis://qtuser:url-pass-8812@127.0.0.1:{port}/0"));
    cfg.password = Some(Secret::new("override-pass-7731"));
    let err = bounded(10, RedisStore::connect(&cfg, "idem", false))
        .await
        .expect_err("nothing listens");
    let texts = printed(&err);
    assert_no_secret(&texts, &["url-pass-8812", "override-pass-7731"]);
    assert!(texts[0].contains(&format!("127.0.0.1:{port}")), "{}", texts[0]);
    assert!(texts[0].contains("qtuser:***@"), "{}", texts[0]);
}

#[tokio::test]
async fn passwords_and_least_privilege_acl_users_work() {
    const PASSWORD: &str = "server-pass-5521";
    let server = PrivateRedis::start_with(vec!["--requirepass".into(), PASSWORD.into()], false);
    let port = server.port();
    bounded(30, async {
        // Password in the URL.
        let store = RedisStore::connect(
            &test_config(&format!("redis://:{PASSWORD}@127.0.0.1:{port}")),
            "idem",
            false,
        )
        .await
        .expect("right password");
        assert!(matches!(
            store.claim(&IdempotencyKey::new(None, "k"), LEASE).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert_eq!(store.health().await, Health::Healthy);
        assert_no_secret(&[format!("{store:?}")], &[PASSWORD]);
        assert!(format!("{store:?}").contains(&format!("127.0.0.1:{port}")));

        // Password as an override (from the environment, typically).
        let mut cfg = test_config(&format!("redis://127.0.0.1:{port}"));
        cfg.password = Some(Secret::new(PASSWORD));
        RedisStore::connect(&cfg, "idem", false)
            .await
            .expect("override password");

        // A wrong one fails with a hint and without either password.
        let mut cfg = test_config(&format!("redis://:{PASSWORD}@127.0.0.1:{port}"));
        cfg.password = Some(Secret::new("wrong-pass-9931"));
        let err = RedisStore::connect(&cfg, "idem", false)
            .await
            .expect_err("wrong password");
        assert_no_secret(&printed(&err), &[PASSWORD, "wrong-pass-9931"]);
        assert!(err.to_string().contains("username / password"), "{err}");

        // An ACL user with exactly the grants the crate documents can do everything...
        let mut admin = raw(&format!("redis://:{PASSWORD}@127.0.0.1:{port}")).await;
        let _: () = redis::cmd("ACL")
            .arg(
                "SETUSER qt on >qt-user-pass-4410 resetkeys ~idem:* resetchannels -@all \
                 +ping +evalsha +script|load +get +set +del"
                    .split(' ')
                    .collect::<Vec<_>>(),
            )
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
        let mut cfg = test_config(&format!("redis://127.0.0.1:{port}"));
        cfg.username = Some("qt".into());
        cfg.password = Some(Secret::new("qt-user-pass-4410"));
        let limited = RedisStore::connect(&cfg, "idem", false)
            .await
            .expect("ACL user connects");
        let keys = [IdempotencyKey::new(Some("t"), "a"), IdempotencyKey::new(Some("t"), "b")];
        let claims = limited
            .claim_batch(keys.to_vec(), LEASE)
            .await
            .expect("claims with the documented ACL");
        let tokens: Vec<_> = claims
            .into_iter()
            .map(|c| match c {
                Claim::Acquired(t) => t,
                other => panic!("expected Acquired, got {other:?}"),
            })
            .collect();
        assert_eq!(limited.complete(&tokens[0], WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(limited.release(&tokens[1]).await.unwrap(), ClaimState::Held);
        assert_eq!(limited.health().await, Health::Healthy);

        // ...and nothing outside its key prefix.
        let elsewhere = RedisStore::connect(&cfg, "other", false).await.expect("connects");
        let err = elsewhere
            .claim(&IdempotencyKey::new(None, "x"), LEASE)
            .await
            .expect_err("no grant on other:*");
        assert!(err.to_string().contains("claim failed"), "{err}");
        assert_no_secret(&printed(&err), &["qt-user-pass-4410"]);
    })
    .await;
}

fn tls_server(certs: &TestCerts) -> PrivateRedis {
    let path = |p: &std::path::Path| p.display().to_string();
    PrivateRedis::start_with(
        vec![
            "--tls-cert-file".into(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ],
        true,
    )
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let certs = TestCerts::generate();
    let server = tls_server(&certs);
    bounded(30, async {
        let mut cfg = test_config(&server.url());
        cfg.ca_file = Some(certs.ca.clone());
        cfg.client_cert_file = Some(certs.client_cert.clone());
        cfg.client_key_file = Some(certs.client_key.clone());
        let store = RedisStore::connect(&cfg, "idem", true)
            .await
            .expect("TLS with client certificate");
        let key = IdempotencyKey::new(Some("tls"), "k");
        let token = match store.claim(&key, LEASE).await.unwrap() {
            Claim::Acquired(t) => t,
            other => panic!("expected Acquired, got {other:?}"),
        };
        assert_eq!(store.complete(&token, WINDOW).await.unwrap(), ClaimState::Held);
        assert_eq!(store.claim(&key, LEASE).await.unwrap(), Claim::Completed);
        assert_eq!(store.health().await, Health::Healthy);

        // The server demands a client certificate.
        let mut no_client_cert = test_config(&server.url());
        no_client_cert.ca_file = Some(certs.ca.clone());
        assert!(RedisStore::connect(&no_client_cert, "idem", true).await.is_err());

        // The server's certificate is not trusted by the system roots.
        let mut system_roots = test_config(&server.url());
        system_roots.client_cert_file = Some(certs.client_cert.clone());
        system_roots.client_key_file = Some(certs.client_key.clone());
        assert!(RedisStore::connect(&system_roots, "idem", true).await.is_err());

        // Plain redis:// to a TLS port does not work either, and is refused outright
        // when TLS is required.
        let plain = test_config(&format!("redis://127.0.0.1:{}", server.port()));
        assert!(RedisStore::connect(&plain, "idem", true).await.is_err());
    })
    .await;
}
