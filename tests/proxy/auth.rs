//! Authentication passthrough: pgshift relays md5, SCRAM-SHA-256 and cleartext exchanges without passwords.

use crate::support::{fresh_db, proxy, MD5_USER, PASSWORD_USER, SCRAM_USER};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_roles_log_in_through_pgshift() {
    let db = fresh_db("t_auth").await;
    let proxy = proxy().await;
    for (user, password) in [MD5_USER, SCRAM_USER, PASSWORD_USER] {
        let url = format!(
            "host=127.0.0.1 port={} dbname={db} user={user} password='{password}'",
            proxy.port()
        );
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        tokio::spawn(connection);
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);

        let wrong = format!(
            "host=127.0.0.1 port={} dbname={db} user={user} password=wrong",
            proxy.port()
        );
        let err = tokio_postgres::connect(&wrong, NoTls)
            .await
            .err()
            .expect("wrong password is refused");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
    }
    proxy.stop().await;
}
