//! Secrets at rest: `callside reencrypt` moves stored OAuth tokens from the old key to the new
//! one through the real binary, with the keys in the environment.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use callside::connections::TokenCipher;
use callside::store::{ConnectionRow, Store};
use secrecy::ExposeSecret;

#[tokio::test]
async fn reencrypt_moves_tokens_to_the_new_key_and_refuses_without_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("callside.db");
    let (k_old, k_new) = ([11u8; 32], [12u8; 32]);
    let old = TokenCipher::new(&k_old);
    {
        let store = Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
        let id = "demo:hubspot";
        store
            .upsert_connection(&ConnectionRow {
                id: id.into(),
                tenant: "demo".into(),
                vendor: "hubspot".into(),
                status: "active".into(),
                key_id: old.key_id().into(),
                access_token_ct: old.encrypt("tok-access-7", &format!("{id}:access")).unwrap(),
                refresh_token_ct: old.encrypt("tok-refresh-8", &format!("{id}:refresh")).unwrap(),
                expires_at: 0,
                scopes: "crm".into(),
                updated_at: 0,
                api_base_url: None,
            })
            .await
            .unwrap();
        store.close().await;
    }
    let run = |old_key: Option<&[u8; 32]>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callside"));
        cmd.args(["reencrypt", "--config"])
            .arg(crate::helpers::repo_path("config/callside.toml"))
            .arg("--data-dir")
            .arg(dir.path())
            .env("CALLSIDE_SECRET_KEY", STANDARD.encode(k_new))
            .env("RUST_LOG", "off");
        match old_key {
            Some(k) => cmd.env("CALLSIDE_SECRET_KEY_OLD", STANDARD.encode(k)),
            None => cmd.env_remove("CALLSIDE_SECRET_KEY_OLD"),
        };
        let out = cmd.output().expect("the binary runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without the old key the row cannot be read: exit 1, the row untouched, no key echoed.
    let (code, _, stderr) = run(None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("demo:hubspot"), "{stderr}");
    assert!(!stderr.contains(&STANDARD.encode(k_new)), "{stderr}");
    // With it: moved.
    let (code, stdout, stderr) = run(Some(&k_old));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("re-encrypted 1 connection(s)"), "{stdout}");
    let store = Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
    let row = store.connection("demo:hubspot").await.unwrap().unwrap();
    let new_only = TokenCipher::new(&k_new);
    assert_eq!(row.key_id, new_only.key_id());
    let access = new_only.decrypt(&row.key_id, &row.access_token_ct, "demo:hubspot:access").unwrap();
    assert_eq!(access.expose_secret(), "tok-access-7");
    for cell in store.raw_connection_columns().await.unwrap().iter().flatten() {
        assert!(!cell.contains("tok-"), "a token in the raw row: {cell}");
    }
    store.close().await;
}
