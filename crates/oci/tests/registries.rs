//! Private registries (htpasswd basic auth, as a real docker-registry does it) with
//! `registryAuth` and with a Docker `config.json`; and the answers for unknown references, a
//! registry that is down, and a registry that would need plain HTTP without being named.

mod common;

use common::{inspect, store, store_with, Registry};
use virga_oci::{Credentials, ImageSpec, InsecureRegistries, OciError, Options, RegistryConfig};

async fn push_small(reg: &Registry, name: &str, creds: Option<&Credentials>) -> virga_oci::Digest {
    let (_d, builder) = store();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("hello.txt"), "private\n").unwrap();
    let layer = builder.build_layer(src.path(), "srv").unwrap();
    let digest = builder
        .build_image(&ImageSpec {
            layers: vec![layer],
            ..ImageSpec::default()
        })
        .unwrap();
    builder
        .push(&digest, &reg.image(name), creds, None)
        .await
        .unwrap();
    digest
}

#[tokio::test]
async fn private_images_pull_with_registry_auth_or_config_json_and_refuse_without() {
    let reg = Registry::with_auth("ada", "s3cret-pw");
    let good = reg.creds.clone().unwrap();
    let target = reg.image("private/app:1");
    let digest = push_small(&reg, "private/app:1", Some(&good)).await;
    let info = inspect(&target, &["--creds", "ada:s3cret-pw"]);
    assert_eq!(info["Digest"], digest.as_str());

    let (_d, images) = store();
    match images.pull(&target, None, None).await {
        Err(e @ OciError::Unauthorized { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&reg.host) && m.contains("401") && m.contains("registryAuth"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    let wrong = Credentials {
        username: "ada".into(),
        password: "nope".into(),
    };
    match images.pull(&target, Some(&wrong), None).await {
        Err(e @ OciError::Unauthorized { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("\"ada\" were refused") && !m.contains("nope"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{wrong:?}").contains("nope"));

    // registryAuth as faas-cli sends it: base64 of user:password.
    let from_field = Credentials::from_base64(&good.to_base64()).unwrap();
    let image = images.pull(&target, Some(&from_field), None).await.unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(
        std::fs::read(image.layers[0].join("srv/hello.txt")).unwrap(),
        b"private\n"
    );

    // A config.json as docker login writes it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut cfg = RegistryConfig::default();
    cfg.set(&format!("http://{}", reg.host), &good);
    cfg.save(&path).unwrap();
    let creds = RegistryConfig::load(&path)
        .unwrap()
        .lookup(&reg.host)
        .unwrap();
    let (_d2, fresh) = store();
    let resolved = fresh.resolve(&target, creds.as_ref()).await.unwrap();
    assert_eq!(resolved.digest, digest);
}

#[tokio::test]
async fn unknown_references_a_registry_that_is_down_and_https_only_hosts_are_named() {
    let reg = Registry::start();
    push_small(&reg, "known:1", None).await;
    let (_d, images) = store();
    for missing in ["known:2", "nosuch/repo:1"] {
        let r = reg.image(missing);
        match images.resolve(&r, None).await {
            Err(e @ OciError::NotFound { .. }) => assert!(e.to_string().contains(&r), "{e}"),
            other => panic!("{missing}: {other:?}"),
        }
    }
    let absent = format!("{}@sha256:{}", reg.image("known"), "a".repeat(64));
    assert!(matches!(
        images.pull(&absent, None, None).await,
        Err(OciError::NotFound { .. })
    ));
    assert!(matches!(
        images.resolve("Bad Ref", None).await,
        Err(OciError::BadReference { .. })
    ));

    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    match images
        .pull(&format!("127.0.0.1:{down}/app:1"), None, None)
        .await
    {
        Err(e @ OciError::Unreachable { .. }) => {
            assert!(e.to_string().contains(&format!("127.0.0.1:{down}")), "{e}")
        }
        other => panic!("{other:?}"),
    }

    // Not loopback, not named: HTTPS only, and the message says how to allow plain HTTP.
    let e = images
        .resolve("registry.invalid:5000/app:1", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OciError::Unreachable { registry, .. } if registry == "registry.invalid:5000"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("--insecure-registry registry.invalid:5000"),
        "{e}"
    );
    let (_d, named) = store_with(Options {
        insecure: InsecureRegistries::new(["registry.invalid:5000"]),
        ..Options::default()
    });
    let e = named
        .resolve("registry.invalid:5000/app:1", None)
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("--insecure-registry"), "{e}");
}
