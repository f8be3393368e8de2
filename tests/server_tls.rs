//! `server_tls`: TLS from the proxy to the servers in each of libpq's
//! `sslmode`s, against a Postgres started with TLS by the test.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardgate_harness::ClusterSpec;
use support::*;

/// A CA and a server certificate it signed for `san` (e.g. `IP:127.0.0.1`).
fn ca_and_server(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = format!("{name}-ca.key");
    let ca_crt = format!("{name}-ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
        ],
    );
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=postgres server",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &crt,
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    (dir.join(ca_crt), dir.join(crt), dir.join(key))
}

/// Whether the proxy's server connection for `client` is encrypted.
async fn server_side_ssl(client: &tokio_postgres::Client) -> bool {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_modes() {
    let c = cluster(ClusterSpec::new(1, 0));
    let node = &c.shard(0).primary;
    let dir = c.dir().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, crt, key) = ca_and_server(&dir, "good", "IP:127.0.0.1");
    let (_, elsewhere_crt, elsewhere_key) =
        ca_and_server(&dir, "elsewhere", "DNS:elsewhere.example");
    let (other_ca, _, _) = ca_and_server(&dir, "other", "IP:127.0.0.1");
    let str_of = |p: &Path| p.display().to_string();

    // Without TLS on the server: prefer falls back, require refuses.
    for (mode, works) in [("disable", true), ("prefer", true), ("require", false)] {
        let port = free_port();
        let proxy = Proxy::start(
            c.dir(),
            port,
            &config(&c, port, &format!("server_tls = \"{mode}\""), ""),
        );
        if works {
            let client = connect(&proxy.app()).await;
            assert!(!server_side_ssl(&client).await, "{mode}");
        } else {
            let e = refused(&proxy.app()).await;
            assert!(e.contains("does not support TLS"), "{mode}: {e}");
        }
    }

    // Install a certificate and turn TLS on (the key readable only by postgres).
    let install = |crt: &Path, key: &Path| {
        let data = node.data_dir();
        std::fs::copy(crt, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        for f in ["server.crt", "server.key"] {
            let out = run(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(f)),
                Duration::from_secs(10),
            );
            assert_success(&out, "chown");
        }
        let out = run(
            Command::new("chmod")
                .arg("600")
                .arg(data.join("server.key")),
            Duration::from_secs(10),
        );
        assert_success(&out, "chmod");
        node.psql(
            "postgres",
            "ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf()",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };
    install(&crt, &key);

    let cases: Vec<(String, bool)> = vec![
        ("server_tls = \"prefer\"".into(), true),
        ("server_tls = \"require\"".into(), true),
        (
            format!(
                "server_tls = \"verify-ca\"\nserver_tls_root_cert = {:?}",
                str_of(&ca)
            ),
            true,
        ),
        (
            format!(
                "server_tls = \"verify-full\"\nserver_tls_root_cert = {:?}",
                str_of(&ca)
            ),
            true,
        ),
        // Signed by another CA: refused.
        (
            format!(
                "server_tls = \"verify-full\"\nserver_tls_root_cert = {:?}",
                str_of(&other_ca)
            ),
            false,
        ),
        (
            format!(
                "server_tls = \"verify-ca\"\nserver_tls_root_cert = {:?}",
                str_of(&other_ca)
            ),
            false,
        ),
    ];
    for (extra, works) in &cases {
        let port = free_port();
        let proxy = Proxy::start(c.dir(), port, &config(&c, port, extra, ""));
        if !*works {
            // The pool's connection or the health check (which then marks
            // the node unavailable) says why.
            let e = refused(&proxy.app()).await;
            assert!(
                e.contains("TLS to server")
                    || e.contains("invalid peer certificate: UnknownIssuer"),
                "{extra}: {e}"
            );
            continue;
        }
        let client = connect(&proxy.app()).await;
        let r = client.query_one("SELECT 1", &[]).await;
        assert!(r.is_ok(), "{extra}: {r:?}");
        // The proxy's own connections (here the health monitor's) use TLS
        // as the pooled ones do.
        let mut seen = String::new();
        let monitor_tls = eventually(Duration::from_secs(20), || {
            seen = node
                .psql(
                    "postgres",
                    "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_ssl s \
                     JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'shardgate-monitor'",
                )
                .unwrap_or_default();
            let (tls, all) = seen.trim().split_once('/').unwrap_or(("0", "0"));
            all != "0" && tls == all
        });
        assert!(
            monitor_tls,
            "{extra}: monitor connections with TLS / all: {seen}"
        );
        {
            assert!(server_side_ssl(&client).await, "{extra}: not encrypted");
            // A whole transaction and a larger answer over TLS.
            let rows = client
                .query(
                    "SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), 2000);
        }
    }

    // A certificate for another name: verify-ca accepts it, verify-full not.
    install(&elsewhere_crt, &elsewhere_key);
    for (mode, works) in [("verify-ca", true), ("verify-full", false)] {
        let port = free_port();
        let extra = format!(
            "server_tls = \"{mode}\"\nserver_tls_root_cert = {:?}",
            str_of(&dir.join("elsewhere-ca.crt"))
        );
        let proxy = Proxy::start(c.dir(), port, &config(&c, port, &extra, ""));
        if works {
            let client = connect(&proxy.app()).await;
            assert!(server_side_ssl(&client).await, "{mode}");
        } else {
            let e = refused(&proxy.app()).await;
            assert!(e.contains("not valid for name"), "{mode}: {e}");
        }
    }
}

/// The error a client gets when the proxy cannot reach the server (at
/// login, or at its first statement).
async fn refused(conninfo: &str) -> String {
    match tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await {
        Err(e) => format!("{e} {:?}", e.as_db_error()),
        Ok((client, conn)) => {
            tokio::spawn(conn);
            let e = client
                .query_one("SELECT 1", &[])
                .await
                .expect_err("refused");
            format!("{e} {:?}", e.as_db_error())
        }
    }
}
