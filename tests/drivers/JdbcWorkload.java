// pgjdbc workload over the migrated `users` and `orders` tables (the driver under Hibernate and Spring): prepared
// statements past the server-prepare threshold, batches, generated keys, update counts, result-set metadata.
// Prints one line per observation; run directly and through pgshift and compare.
import java.sql.*;
import java.util.*;

public class JdbcWorkload {
    static void emit(String name, Object value) {
        System.out.println(name + " " + value);
    }

    static String meta(ResultSet rs) throws SQLException {
        ResultSetMetaData m = rs.getMetaData();
        List<String> cols = new ArrayList<>();
        for (int i = 1; i <= m.getColumnCount(); i++) {
            cols.add(String.join(":", m.getColumnLabel(i), m.getColumnTypeName(i), m.getTableName(i),
                    m.getSchemaName(i), String.valueOf(m.isAutoIncrement(i)), String.valueOf(m.isNullable(i)),
                    String.valueOf(m.getPrecision(i)), String.valueOf(m.getScale(i))));
        }
        return cols.toString();
    }

    static String rows(ResultSet rs) throws SQLException {
        List<String> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) row.add(rs.getString(i));
            out.add(row.toString());
        }
        return out.toString();
    }

    public static void main(String[] args) throws Exception {
        java.net.URI uri = new java.net.URI(args[0]);
        String url = "jdbc:postgresql://" + uri.getHost() + ":" + uri.getPort() + uri.getPath()
                + "?user=" + uri.getUserInfo() + "&prepareThreshold=5";
        try (Connection c = DriverManager.getConnection(url)) {
            // Inserts with generated keys, past the prepare threshold (server-side prepared from the 5th).
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO users (fullname, email, qty) VALUES (?, ?, ?)", Statement.RETURN_GENERATED_KEYS)) {
                for (int i = 0; i < 7; i++) {
                    ps.setString(1, "user " + i);
                    ps.setString(2, "u" + i + "@x");
                    ps.setInt(3, i);
                    int count = ps.executeUpdate();
                    try (ResultSet keys = ps.getGeneratedKeys()) {
                        keys.next();
                        emit("insert", count + " id=" + keys.getLong("id") + " name=" + keys.getString("fullname"));
                    }
                }
            }
            // Update counts: pgjdbc executes every update with a row limit of 1.
            try (PreparedStatement ps = c.prepareStatement("UPDATE users SET qty = qty + ? WHERE id <= ?")) {
                for (int i = 1; i <= 7; i++) {
                    ps.setInt(1, i);
                    ps.setLong(2, i);
                    emit("update_count", ps.executeUpdate());
                }
            }
            try (PreparedStatement ps = c.prepareStatement("UPDATE orders SET legacy_status = ? WHERE id = ?")) {
                ps.setString(1, "x");
                ps.setLong(2, 42);
                emit("update_none", ps.executeUpdate());
            }
            // Batches, and a failing batch.
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO orders (user_id, legacy_status, amount) VALUES (?, ?, ?)")) {
                for (int i = 1; i <= 4; i++) {
                    ps.setLong(1, i);
                    ps.setString(2, i % 2 == 0 ? "paid" : null);
                    ps.setBigDecimal(3, new java.math.BigDecimal(i + ".25"));
                    ps.addBatch();
                }
                emit("batch", Arrays.toString(ps.executeBatch()));
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("UPDATE users SET email = ? WHERE id = ?")) {
                ps.setString(1, "new1@x");
                ps.setLong(2, 1);
                ps.addBatch();
                ps.setString(1, "u3@x");
                ps.setLong(2, 2);
                ps.addBatch();
                ps.setString(1, "new3@x");
                ps.setLong(2, 3);
                ps.addBatch();
                ps.executeBatch();
                emit("failing_batch", "no error");
            } catch (BatchUpdateException e) {
                emit("failing_batch", e.getSQLState() + " " + Arrays.toString(e.getUpdateCounts()));
            }
            c.rollback();
            // Savepoints.
            try (Statement s = c.createStatement()) {
                s.executeUpdate("UPDATE users SET fullname = 'kept' WHERE id = 1");
                Savepoint sp = c.setSavepoint();
                s.executeUpdate("UPDATE users SET fullname = 'ghost' WHERE id = 2");
                c.rollback(sp);
                s.executeUpdate("DELETE FROM users WHERE id = 7");
            }
            c.commit();
            c.setAutoCommit(true);
            // RETURNING through executeQuery, and result-set metadata of reads and of RETURNING.
            try (PreparedStatement ps = c.prepareStatement("UPDATE users SET qty = qty * 2 WHERE id IN (1, 2) RETURNING id, fullname, qty")) {
                try (ResultSet rs = ps.executeQuery()) {
                    emit("returning_meta", meta(rs));
                    emit("returning", rows(rs));
                }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT * FROM users ORDER BY id")) {
                emit("users_meta", meta(rs));
                emit("users", rows(rs));
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT id, user_id, legacy_status, amount FROM orders ORDER BY id")) {
                emit("orders_meta", meta(rs));
                emit("orders", rows(rs));
            }
        }
    }
}
