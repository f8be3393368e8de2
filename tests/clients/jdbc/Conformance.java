// pgjdbc program of the driver conformance matrix (tests/clients/SCENARIOS.md).
//
//   javac -d BUILD -cp /usr/share/java/postgresql.jar Conformance.java
//   java -cp BUILD:/usr/share/java/postgresql.jar Conformance          (all scenarios)
//   java -cp BUILD:/usr/share/java/postgresql.jar Conformance NAME...  (only those scenarios, by hand)
//   java -cp BUILD:/usr/share/java/postgresql.jar Conformance hold KEY (client_killed's child)
//
// Prints one JSON line per scenario on standard output and nothing else;
// diagnostics go to standard error. Every check of data is made directly on
// the primaries (SG_PRIMARIES) or against the reference database (SG_REF),
// never through the proxy.

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigDecimal;
import java.net.URLEncoder;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.util.PGobject;

public class Conformance {

    // ------------------------------------------------------------------
    // Environment (SCENARIOS.md, "What a program gets")
    // ------------------------------------------------------------------

    static String host;
    static int port;
    static String user;
    static String password;
    static String database;
    static String topology;
    static List<String> primaries;
    static String refAddr;
    static String refDatabase;
    static long keyBase;

    /** Per-scenario time limit. */
    static final long SCENARIO_LIMIT_MS = 60_000;
    /** Socket read timeout of every connection, so a lost answer fails a step instead of the whole scenario. */
    static final int NETWORK_TIMEOUT_MS = 20_000;
    /** How long a comparison through the proxy is retried while a replica may lag. */
    static final long CATCH_UP_MS = 10_000;

    static final ExecutorService NET_EXEC = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "net");
        t.setDaemon(true);
        return t;
    });

    static final String[] CURRENCIES = {"USD", "EUR", "JPY", "GBP"};
    static final String INSERT_ACCOUNT =
            "INSERT INTO accounts (id, owner, currency, balance) VALUES (?, ?, ?, ?)";

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalStateException("environment variable " + name + " is not set");
        }
        return v;
    }

    static void loadEnv() {
        host = env("SG_HOST");
        port = Integer.parseInt(env("SG_PORT"));
        user = env("SG_USER");
        password = env("SG_PASSWORD");
        database = env("SG_DATABASE");
        topology = env("SG_TOPOLOGY");
        primaries = Arrays.asList(env("SG_PRIMARIES").split(","));
        refAddr = env("SG_REF");
        refDatabase = env("SG_REF_DATABASE");
        keyBase = Long.parseLong(env("SG_KEY_BASE"));
    }

    /** Reads through the proxy may lag behind writes (eventual reads on a replica). */
    static boolean mayLag() {
        return !topology.equals("single");
    }

    /** Run straight against PostgreSQL (the `direct` env of serve_topologies): no proxy in between. */
    static boolean noProxy() {
        return primaries.contains(host + ":" + port);
    }

    // ------------------------------------------------------------------
    // Connections
    // ------------------------------------------------------------------

    static String url(String addr, String db, String extra) {
        String u = "jdbc:postgresql://" + addr + "/" + db
                + "?user=" + URLEncoder.encode(user, StandardCharsets.UTF_8)
                + "&password=" + URLEncoder.encode(password, StandardCharsets.UTF_8)
                + "&sslmode=disable";
        return extra.isEmpty() ? u : u + "&" + extra;
    }

    static Connection connect(String addr, String db, String extra) throws SQLException {
        Connection c = DriverManager.getConnection(url(addr, db, extra));
        c.setNetworkTimeout(NET_EXEC, NETWORK_TIMEOUT_MS);
        return c;
    }

    /** A failed check: its message is the scenario's detail. */
    static final class Fail extends Exception {
        private static final long serialVersionUID = 1L;

        Fail(String message) {
            super(message);
        }
    }

    /** One scenario's run: its key range and every connection and process it opened. */
    static final class Ctx {
        final int index;
        final long base;
        final List<Connection> conns = new CopyOnWriteArrayList<>();
        final List<Process> procs = new CopyOnWriteArrayList<>();
        volatile String step = "start";
        private List<Connection> primaryConns;

        Ctx(int index) {
            this.index = index;
            this.base = keyBase + 1000L * index;
        }

        /** Key k of this scenario (SCENARIOS.md, "Keys"). */
        long key(int k) {
            return base + k;
        }

        long lo() {
            return base;
        }

        long hi() {
            return base + 999;
        }

        void step(String s) {
            step = s;
        }

        <T extends Connection> T track(T c) {
            conns.add(c);
            return c;
        }

        /** A new connection through the proxy (autocommit, default pgjdbc settings). */
        Connection proxy() throws SQLException {
            return proxy("");
        }

        Connection proxy(String extra) throws SQLException {
            return track(connect(host + ":" + port, database, extra));
        }

        /** One direct connection to every primary (opened once per scenario). */
        List<Connection> primaries() throws SQLException {
            if (primaryConns == null) {
                List<Connection> l = new ArrayList<>();
                for (String a : Conformance.primaries) {
                    l.add(track(connect(a, database, "")));
                }
                primaryConns = l;
            }
            return primaryConns;
        }

        /** A direct connection to the unsharded reference database. */
        Connection ref() throws SQLException {
            return track(connect(refAddr, refDatabase, ""));
        }

        void closeAll() {
            for (Process p : procs) {
                p.destroyForcibly();
            }
            for (Connection c : conns) {
                try {
                    c.close();
                } catch (SQLException e) {
                    // already broken: nothing to do
                }
            }
        }

        /** After a timeout: drop the sockets under the stuck thread. */
        void abortAll() {
            for (Process p : procs) {
                p.destroyForcibly();
            }
            for (Connection c : conns) {
                try {
                    c.abort(Runnable::run);
                } catch (SQLException e) {
                    // nothing more to do
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Small helpers: statements, rows, comparisons, errors
    // ------------------------------------------------------------------

    static void bind(PreparedStatement ps, Object... params) throws SQLException {
        for (int i = 0; i < params.length; i++) {
            ps.setObject(i + 1, params[i]);
        }
    }

    /** executeUpdate of a prepared statement; the reported row count. */
    static int update(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            bind(ps, params);
            return ps.executeUpdate();
        }
    }

    static int update(PreparedStatement ps, Object... params) throws SQLException {
        bind(ps, params);
        return ps.executeUpdate();
    }

    /** Every row as strings (getString; NULL as null). */
    static List<List<String>> rows(ResultSet rs) throws SQLException {
        List<List<String>> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<String> r = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                r.add(rs.getString(i));
            }
            out.add(r);
        }
        return out;
    }

    static List<List<String>> query(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            bind(ps, params);
            try (ResultSet rs = ps.executeQuery()) {
                return rows(rs);
            }
        }
    }

    /** A plain (unparameterised) query through Statement. */
    static List<List<String>> plainQuery(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            return rows(rs);
        }
    }

    static List<String> row(Object... values) {
        List<String> r = new ArrayList<>();
        for (Object v : values) {
            r.add(v == null ? null : v instanceof BigDecimal ? ((BigDecimal) v).toPlainString() : v.toString());
        }
        return r;
    }

    /** The same query on every primary, rows concatenated and ordered by the first column (a number). */
    static List<List<String>> onPrimaries(Ctx c, String sql, Object... params) throws SQLException {
        List<List<String>> all = new ArrayList<>();
        for (Connection p : c.primaries()) {
            all.addAll(query(p, sql, params));
        }
        all.sort(Comparator.comparingLong(r -> Long.parseLong(r.get(0))));
        return all;
    }

    /** Accounts of [lo, hi] on the primaries: id, owner, currency, balance, by id (a duplicate shows twice). */
    static List<List<String>> accountsOnPrimaries(Ctx c, long lo, long hi) throws SQLException {
        return onPrimaries(c,
                "SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN ? AND ? ORDER BY id", lo, hi);
    }

    static List<List<String>> accountsOnPrimaries(Ctx c) throws SQLException {
        return accountsOnPrimaries(c, c.lo(), c.hi());
    }

    static String clip(Object o) {
        String s = String.valueOf(o);
        return s.length() > 600 ? s.substring(0, 600) + "..." : s;
    }

    /** null when equal, else what differs. */
    static String diff(String what, List<?> expected, List<?> found) {
        if (expected.equals(found)) {
            return null;
        }
        int i = 0;
        while (i < expected.size() && i < found.size() && Objects.equals(expected.get(i), found.get(i))) {
            i++;
        }
        if (expected.size() <= 6 && found.size() <= 6) {
            return what + ": expected " + clip(expected) + ", found " + clip(found);
        }
        String e = i < expected.size() ? clip(expected.get(i)) : "(no more rows)";
        String f = i < found.size() ? clip(found.get(i)) : "(no more rows)";
        return what + ": expected " + expected.size() + " rows, found " + found.size()
                + "; first difference at row " + i + ": expected " + e + ", found " + f;
    }

    static void check(List<String> problems) throws Fail {
        problems.removeIf(Objects::isNull);
        if (!problems.isEmpty()) {
            throw new Fail(String.join("; ", problems));
        }
    }

    static String expectCount(String what, int expected, int found) {
        return expected == found ? null : what + " reported " + found + " rows affected, expected " + expected;
    }

    /** SQLSTATE and message of an exception (and of the next one of a batch). */
    static String describe(Throwable e) {
        if (e instanceof SQLException) {
            SQLException s = (SQLException) e;
            String d = "SQLSTATE " + s.getSQLState() + ": " + s.getMessage();
            SQLException next = s.getNextException();
            if (next != null && next != s) {
                d += " (next: SQLSTATE " + next.getSQLState() + ": " + next.getMessage() + ")";
            }
            return d;
        }
        if (e instanceof Fail) {
            return e.getMessage();
        }
        return e.getClass().getSimpleName() + ": " + e.getMessage();
    }

    interface SqlAction {
        void run() throws Exception;
    }

    /** null when the action fails with `state`, else what happened. */
    static String expectState(String what, String state, SqlAction action) {
        try {
            action.run();
            return what + " succeeded, expected SQLSTATE " + state;
        } catch (SQLException e) {
            return state.equals(e.getSQLState()) ? null
                    : what + " failed with " + describe(e) + ", expected SQLSTATE " + state;
        } catch (Exception e) {
            return what + " failed with " + describe(e) + ", expected SQLSTATE " + state;
        }
    }

    /** null when the action succeeds, else its error. */
    static String expectOk(String what, SqlAction action) {
        try {
            action.run();
            return null;
        } catch (Exception e) {
            return what + " failed: " + describe(e);
        }
    }

    interface Rows {
        List<?> get() throws Exception;
    }

    /**
     * Compares what the proxy answers with `expected`, retrying for up to 10 s where reads may
     * go to a lagging replica (a single attempt in `single`). null when equal.
     */
    static String compareThroughProxy(String what, List<?> expected, Rows actual) throws InterruptedException {
        long deadline = System.currentTimeMillis() + (mayLag() ? CATCH_UP_MS : 0);
        String last;
        while (true) {
            try {
                last = diff(what, expected, actual.get());
            } catch (Exception e) {
                last = what + ": " + describe(e);
            }
            if (last == null || System.currentTimeMillis() >= deadline) {
                return last;
            }
            Thread.sleep(200);
        }
    }

    static boolean isSingleValue(List<List<String>> r, long n) {
        return r.size() == 1 && r.get(0).size() == 1 && String.valueOf(n).equals(r.get(0).get(0));
    }

    // ------------------------------------------------------------------
    // Data shared by cursor_fetch and cross_shard_read
    // ------------------------------------------------------------------

    static final int CURSOR_SCENARIO = 9;
    static final int CURSOR_ROWS = 120;

    static long cursorLo() {
        return keyBase + 1000L * CURSOR_SCENARIO;
    }

    static long cursorHi() {
        return cursorLo() + CURSOR_ROWS - 1;
    }

    /** Row k of the cursor data: ties in balance so that ORDER BY balance DESC, id matters. */
    static List<String> cursorRow(int k) {
        return row(cursorLo() + k, "cursor " + k, CURRENCIES[k % 4], new BigDecimal((k % 23) * 10 + ".50"));
    }

    /**
     * Makes sure the 120 cursor rows are on the primaries (loaded through the proxy, one
     * autocommit INSERT each) and in the reference database; loads what is missing.
     */
    static void ensureCursorRows(Ctx c) throws Exception {
        List<List<String>> expected = new ArrayList<>();
        for (int k = 0; k < CURSOR_ROWS; k++) {
            expected.add(cursorRow(k));
        }
        String sql = "SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN ? AND ? ORDER BY id";
        long lo = cursorLo();
        long hi = lo + 999;
        if (!expected.equals(accountsOnPrimaries(c, lo, hi))) {
            c.step("loading the cursor rows through the proxy");
            for (Connection p : c.primaries()) {
                update(p, "DELETE FROM accounts WHERE id BETWEEN ? AND ?", lo, hi);
            }
            Connection p = c.proxy();
            try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
                for (List<String> r : expected) {
                    int n = update(ins, Long.parseLong(r.get(0)), r.get(1), r.get(2), new BigDecimal(r.get(3)));
                    if (n != 1) {
                        throw new Fail("loading the cursor rows: INSERT of " + r.get(0) + " reported " + n + " rows");
                    }
                }
            }
            String d = diff("cursor rows on the primaries after loading", expected, accountsOnPrimaries(c, lo, hi));
            if (d != null) {
                throw new Fail(d);
            }
        }
        Connection ref = c.ref();
        if (!expected.equals(query(ref, sql, lo, hi))) {
            update(ref, "DELETE FROM accounts WHERE id BETWEEN ? AND ?", lo, hi);
            try (PreparedStatement ins = ref.prepareStatement(INSERT_ACCOUNT)) {
                for (List<String> r : expected) {
                    bind(ins, Long.parseLong(r.get(0)), r.get(1), r.get(2), new BigDecimal(r.get(3)));
                    ins.addBatch();
                }
                ins.executeBatch();
            }
        }
    }

    // ------------------------------------------------------------------
    // Scenarios
    // ------------------------------------------------------------------

    interface Body {
        /** Runs the scenario; returns the detail of a pass, throws on failure. */
        String run(Ctx c) throws Exception;
    }

    record Scenario(String name, Body body) {
    }

    static final Scenario[] SCENARIOS = {
        new Scenario("autocommit", Conformance::autocommit),
        new Scenario("tx_commit", Conformance::txCommit),
        new Scenario("tx_rollback", Conformance::txRollback),
        new Scenario("savepoint", Conformance::savepoint),
        new Scenario("error_in_tx", Conformance::errorInTx),
        new Scenario("prepared_reuse", Conformance::preparedReuse),
        new Scenario("batch", Conformance::batch),
        new Scenario("returning", Conformance::returning),
        new Scenario("cursor_fetch", Conformance::cursorFetch),
        new Scenario("copy_text", Conformance::copyText),
        new Scenario("copy_csv", Conformance::copyCsv),
        new Scenario("copy_binary", Conformance::copyBinary),
        new Scenario("listen_notify", Conformance::listenNotify),
        new Scenario("cancel_timeout", Conformance::cancelTimeout),
        new Scenario("types", Conformance::types),
        new Scenario("metadata", Conformance::metadata),
        new Scenario("read_your_writes", Conformance::readYourWrites),
        new Scenario("cross_shard_read", Conformance::crossShardRead),
        new Scenario("client_killed", Conformance::clientKilled),
        new Scenario("backend_terminated", Conformance::backendTerminated),
        new Scenario("multi_statement", Conformance::multiStatement),
    };

    /**
     * 1. autocommit: ten prepared INSERTs, an UPDATE and a DELETE, each its own implicit
     * transaction (pgjdbc: Parse/Bind/Execute/Sync per statement, named statements after the
     * 5th use of the same PreparedStatement).
     */
    static String autocommit(Ctx c) throws Exception {
        Connection p = c.proxy();
        List<String> problems = new ArrayList<>();
        List<List<String>> expected = new ArrayList<>();
        c.step("INSERTs");
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = 0; k < 10; k++) {
                BigDecimal bal = new BigDecimal(k + ".25");
                problems.add(expectCount("INSERT of " + c.key(k), 1,
                        update(ins, c.key(k), "auto " + k, CURRENCIES[k % 4], bal)));
                if (k == 0) {
                    bal = new BigDecimal("99.50");
                }
                if (k != 9) {
                    expected.add(row(c.key(k), "auto " + k, CURRENCIES[k % 4], bal));
                }
            }
        }
        c.step("UPDATE and DELETE");
        problems.add(expectCount("UPDATE", 1,
                update(p, "UPDATE accounts SET balance = ? WHERE id = ?", new BigDecimal("99.50"), c.key(0))));
        problems.add(expectCount("DELETE", 1, update(p, "DELETE FROM accounts WHERE id = ?", c.key(9))));
        problems.add(diff("accounts on the primaries", expected, accountsOnPrimaries(c)));
        check(problems);
        return "";
    }

    /**
     * 2./3. setAutoCommit(false): pgjdbc sends BEGIN in the same batch as the transaction's first
     * statement (Parse/Bind/Execute BEGIN, Parse/Bind/Execute UPDATE, Sync); a prepared UPDATE of
     * an existing row first, then five INSERTs, then commit() or rollback().
     */
    static String transaction(Ctx c, boolean commit) throws Exception {
        Connection p = c.proxy();
        String prefix = commit ? "txc " : "txr ";
        c.step("inserting the row to update (autocommit)");
        String setup = expectCount("setup INSERT", 1,
                update(p, INSERT_ACCOUNT, c.key(0), prefix + 0, "EUR", new BigDecimal("5.00")));
        if (setup != null) {
            throw new Fail(setup);
        }
        List<String> problems = new ArrayList<>();
        p.setAutoCommit(false);
        c.step("first statement of the transaction (UPDATE)");
        try (PreparedStatement up = p.prepareStatement("UPDATE accounts SET balance = ? WHERE id = ?")) {
            int first = update(up, new BigDecimal("42.00"), c.key(0));
            if (first != 1) {
                problems.add("the transaction's first statement (UPDATE of an existing row) reported "
                        + first + " rows affected, expected 1");
            }
        }
        c.step("INSERTs in the transaction");
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = 1; k <= 5; k++) {
                problems.add(expectCount("INSERT of " + c.key(k), 1,
                        update(ins, c.key(k), prefix + k, CURRENCIES[k % 4], new BigDecimal(k + ".00"))));
            }
        }
        c.step(commit ? "commit" : "rollback");
        if (commit) {
            p.commit();
        } else {
            p.rollback();
        }
        List<List<String>> expected = new ArrayList<>();
        expected.add(row(c.key(0), prefix + 0, "EUR", commit ? "42.00" : "5.00"));
        if (commit) {
            for (int k = 1; k <= 5; k++) {
                expected.add(row(c.key(k), prefix + k, CURRENCIES[k % 4], k + ".00"));
            }
        }
        problems.add(diff("accounts on the primaries after " + (commit ? "COMMIT" : "ROLLBACK"),
                expected, accountsOnPrimaries(c)));
        check(problems);
        return "";
    }

    static String txCommit(Ctx c) throws Exception {
        return transaction(c, true);
    }

    static String txRollback(Ctx c) throws Exception {
        return transaction(c, false);
    }

    /**
     * Keys k in [first, first + n) grouped by the primary that stores them: probe rows inserted
     * through the proxy (autocommit), found on the primaries, then deleted there.
     */
    static List<List<Long>> keysByPrimary(Ctx c, Connection p, int first, int n) throws Exception {
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = first; k < first + n; k++) {
                update(ins, c.key(k), "probe", "USD", BigDecimal.ZERO);
            }
        }
        List<List<Long>> out = new ArrayList<>();
        for (Connection pr : c.primaries()) {
            List<Long> keys = new ArrayList<>();
            for (List<String> r : query(pr, "SELECT id FROM accounts WHERE id BETWEEN ? AND ? ORDER BY id",
                    c.key(first), c.key(first + n - 1))) {
                keys.add(Long.parseLong(r.get(0)));
            }
            out.add(keys);
            update(pr, "DELETE FROM accounts WHERE id BETWEEN ? AND ?", c.key(first), c.key(first + n - 1));
        }
        return out;
    }

    /**
     * 4. savepoint: setSavepoint / rollback(Savepoint) / releaseSavepoint (SAVEPOINT s,
     * ROLLBACK TO SAVEPOINT s, RELEASE SAVEPOINT s). Sharded: a on one shard, b and c on the
     * other, so the savepoint is taken before the transaction reaches b's shard.
     */
    static String savepoint(Ctx c) throws Exception {
        Connection p = c.proxy();
        long a = c.key(0);
        long b = c.key(1);
        long cc = c.key(2);
        String placement = "";
        if (c.primaries().size() > 1) {
            c.step("finding keys on different shards");
            List<List<Long>> by = keysByPrimary(c, p, 10, 20);
            int x = by.get(0).isEmpty() ? 1 : 0;
            int y = 1 - x;
            if (by.get(x).size() >= 1 && by.get(y).size() >= 2) {
                a = by.get(x).get(0);
                b = by.get(y).get(0);
                cc = by.get(y).get(1);
                placement = "a on primary " + x + ", b and c on primary " + y;
            } else {
                placement = "could not place keys on different shards (" + by + "), used consecutive keys";
            }
        }
        List<String> problems = new ArrayList<>();
        p.setAutoCommit(false);
        c.step("INSERT a");
        problems.add(expectCount("INSERT a", 1, update(p, INSERT_ACCOUNT, a, "sp a", "USD", BigDecimal.ONE)));
        c.step("SAVEPOINT s");
        Savepoint sp = p.setSavepoint("s");
        c.step("INSERT b");
        problems.add(expectCount("INSERT b", 1, update(p, INSERT_ACCOUNT, b, "sp b", "EUR", BigDecimal.ONE)));
        c.step("ROLLBACK TO s");
        p.rollback(sp);
        c.step("INSERT c");
        problems.add(expectCount("INSERT c", 1, update(p, INSERT_ACCOUNT, cc, "sp c", "JPY", BigDecimal.ONE)));
        c.step("RELEASE s");
        p.releaseSavepoint(sp);
        c.step("COMMIT");
        p.commit();
        List<List<String>> expected = new ArrayList<>();
        expected.add(row(a, "sp a", "USD", "1.00"));
        expected.add(row(cc, "sp c", "JPY", "1.00"));
        expected.sort(Comparator.comparingLong(r -> Long.parseLong(r.get(0))));
        problems.add(diff("accounts on the primaries (a and c, not b)", expected, accountsOnPrimaries(c)));
        check(problems);
        return placement;
    }

    /**
     * 5. error_in_tx: a failing statement aborts the transaction (23505), the next one gets
     * 25P02, rollback() ends it and the connection is usable again (pgjdbc's default
     * autosave=never, so no implicit savepoints).
     */
    static String errorInTx(Ctx c) throws Exception {
        Connection p = c.proxy();
        c.step("inserting the row to collide with (autocommit)");
        String setup = expectCount("setup INSERT", 1,
                update(p, INSERT_ACCOUNT, c.key(1), "err dup", "USD", BigDecimal.ONE));
        if (setup != null) {
            throw new Fail(setup);
        }
        List<String> problems = new ArrayList<>();
        p.setAutoCommit(false);
        c.step("INSERT a in the transaction");
        problems.add(expectOk("INSERT a", () -> {
            int n = update(p, INSERT_ACCOUNT, c.key(0), "err a", "USD", BigDecimal.ONE);
            if (n != 1) {
                throw new Fail("reported " + n + " rows affected, expected 1");
            }
        }));
        c.step("duplicate INSERT");
        problems.add(expectState("duplicate INSERT", "23505",
                () -> update(p, INSERT_ACCOUNT, c.key(1), "err dup again", "USD", BigDecimal.ONE)));
        c.step("statement after the error");
        problems.add(expectState("SELECT 1 after the error", "25P02", () -> plainQuery(p, "SELECT 1")));
        c.step("rollback");
        p.rollback();
        p.setAutoCommit(true);
        c.step("SELECT 1 after ROLLBACK");
        problems.add(expectOk("SELECT 1 after ROLLBACK", () -> {
            List<List<String>> r = plainQuery(p, "SELECT 1");
            if (!isSingleValue(r, 1)) {
                throw new Fail("returned " + r);
            }
        }));
        problems.add(diff("accounts on the primaries (a absent)",
                List.of(row(c.key(1), "err dup", "USD", "1.00")), accountsOnPrimaries(c)));
        check(problems);
        return "";
    }

    /**
     * 6. prepared_reuse: one PreparedStatement run 10 times; from the 5th run on pgjdbc uses a
     * named server-side statement (Parse once, then Bind/Execute only).
     */
    static String preparedReuse(Ctx c) throws Exception {
        Connection p = c.proxy();
        c.step("inserting 10 rows (autocommit)");
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = 0; k < 10; k++) {
                int n = update(ins, c.key(k), "prep " + k, CURRENCIES[k % 4], new BigDecimal(k + ".75"));
                if (n != 1) {
                    throw new Fail("setup INSERT of " + c.key(k) + " reported " + n + " rows");
                }
            }
        }
        List<String> problems = new ArrayList<>();
        boolean serverPrepared;
        try (PreparedStatement sel = p.prepareStatement("SELECT id, owner, balance FROM accounts WHERE id = ?")) {
            for (int k = 0; k < 10; k++) {
                c.step("prepared SELECT, key " + k);
                final long key = c.key(k);
                problems.add(compareThroughProxy("SELECT of " + key,
                        List.of(row(key, "prep " + k, k + ".75")), () -> {
                            sel.setLong(1, key);
                            try (ResultSet rs = sel.executeQuery()) {
                                return rows(rs);
                            }
                        }));
            }
            serverPrepared = sel.unwrap(PGStatement.class).isUseServerPrepare();
        }
        check(problems);
        return serverPrepared ? "" : "pgjdbc did not switch to a server-prepared statement";
    }

    /** Checks executeBatch's counts: 1 each, or SUCCESS_NO_INFO where allowed (rewritten batches). */
    static String batchCounts(String what, int[] counts, int expected, boolean noInfoOk) {
        if (counts.length != expected) {
            return what + ": executeBatch returned " + counts.length + " counts, expected " + expected;
        }
        for (int i = 0; i < counts.length; i++) {
            boolean good = counts[i] == 1 || (noInfoOk && counts[i] == Statement.SUCCESS_NO_INFO);
            if (!good) {
                return what + ": statement " + i + " of the batch reported " + counts[i] + " rows, expected 1";
            }
        }
        return null;
    }

    /**
     * 7. batch: addBatch/executeBatch, once with the default reWriteBatchedInserts=false (one
     * Parse/Bind/Execute per row, one Sync at the end) and once on a connection with
     * reWriteBatchedInserts=true (multi-row INSERT ... VALUES); then a batch of UPDATEs in a
     * transaction, rolled back.
     */
    static String batch(Ctx c) throws Exception {
        List<String> problems = new ArrayList<>();
        List<List<String>> expected = new ArrayList<>();
        Connection p = c.proxy();
        c.step("batch INSERT (reWriteBatchedInserts=false)");
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = 0; k < 50; k++) {
                bind(ins, c.key(k), "batch " + k, CURRENCIES[k % 4], new BigDecimal("3.00"));
                ins.addBatch();
                expected.add(row(c.key(k), "batch " + k, CURRENCIES[k % 4], "3.00"));
            }
            problems.add(batchCounts("batch INSERT", ins.executeBatch(), 50, false));
        } catch (BatchUpdateException e) {
            problems.add("batch INSERT failed: " + describe(e));
        }
        c.step("batch INSERT (reWriteBatchedInserts=true)");
        Connection rw = c.proxy("reWriteBatchedInserts=true");
        try (PreparedStatement ins = rw.prepareStatement(INSERT_ACCOUNT)) {
            for (int k = 100; k < 150; k++) {
                bind(ins, c.key(k), "batch " + k, CURRENCIES[k % 4], new BigDecimal("3.00"));
                ins.addBatch();
                expected.add(row(c.key(k), "batch " + k, CURRENCIES[k % 4], "3.00"));
            }
            problems.add(batchCounts("rewritten batch INSERT", ins.executeBatch(), 50, true));
        } catch (BatchUpdateException e) {
            problems.add("rewritten batch INSERT failed: " + describe(e));
        }
        problems.add(diff("accounts on the primaries after the batches", expected, accountsOnPrimaries(c)));
        c.step("batch UPDATE in a transaction, then rollback");
        p.setAutoCommit(false);
        try (PreparedStatement up = p.prepareStatement("UPDATE accounts SET balance = balance + 1 WHERE id = ?")) {
            for (int k = 0; k < 50; k++) {
                up.setLong(1, c.key(k));
                up.addBatch();
            }
            problems.add(batchCounts("batch UPDATE in the transaction", up.executeBatch(), 50, false));
        } catch (BatchUpdateException e) {
            problems.add("batch UPDATE failed: " + describe(e));
        }
        p.rollback();
        problems.add(diff("accounts on the primaries after the rolled back UPDATEs",
                expected, accountsOnPrimaries(c)));
        check(problems);
        return "";
    }

    /**
     * 8. returning: INSERT ... RETURNING id through executeQuery, the same through
     * prepareStatement(sql, {"id"}) + getGeneratedKeys (pgjdbc appends RETURNING "id"), and
     * UPDATE ... RETURNING balance.
     */
    static String returning(Ctx c) throws Exception {
        Connection p = c.proxy();
        long acct = c.key(0);
        c.step("inserting the account");
        String setup = expectCount("setup INSERT", 1,
                update(p, INSERT_ACCOUNT, acct, "ret", "USD", new BigDecimal("100.00")));
        if (setup != null) {
            throw new Fail(setup);
        }
        List<String> problems = new ArrayList<>();
        c.step("INSERT ... RETURNING id");
        Long id1 = null;
        try (PreparedStatement ps = p.prepareStatement(
                "INSERT INTO ledger (account_id, amount, note) VALUES (?, ?, ?) RETURNING id")) {
            bind(ps, acct, new BigDecimal("12.34"), "ret 1");
            try (ResultSet rs = ps.executeQuery()) {
                List<List<String>> r = rows(rs);
                if (r.size() != 1) {
                    problems.add("INSERT ... RETURNING id returned " + r.size() + " rows, expected 1");
                } else {
                    id1 = Long.parseLong(r.get(0).get(0));
                }
            }
        }
        c.step("INSERT with getGeneratedKeys");
        Long id2 = null;
        try (PreparedStatement ps = p.prepareStatement(
                "INSERT INTO ledger (account_id, amount, note) VALUES (?, ?, ?)", new String[] {"id"})) {
            bind(ps, acct, new BigDecimal("56.78"), "ret 2");
            problems.add(expectCount("INSERT with getGeneratedKeys", 1, ps.executeUpdate()));
            try (ResultSet rs = ps.getGeneratedKeys()) {
                List<List<String>> r = rows(rs);
                if (r.size() != 1) {
                    problems.add("getGeneratedKeys returned " + r.size() + " rows, expected 1");
                } else {
                    id2 = Long.parseLong(r.get(0).get(0));
                }
            }
        }
        c.step("UPDATE ... RETURNING balance");
        List<List<String>> bal = query(p, "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
                new BigDecimal("10.25"), acct);
        problems.add(diff("UPDATE ... RETURNING balance", List.of(row("110.25")), bal));
        List<List<String>> expectedLedger = new ArrayList<>();
        if (id1 != null) {
            expectedLedger.add(row(id1, "12.34", "ret 1"));
        }
        if (id2 != null) {
            expectedLedger.add(row(id2, "56.78", "ret 2"));
        }
        expectedLedger.sort(Comparator.comparingLong(r -> Long.parseLong(r.get(0))));
        problems.add(diff("ledger rows on the primaries (ids returned)", expectedLedger,
                onPrimaries(c, "SELECT id, amount, note FROM ledger WHERE account_id = ? ORDER BY id", acct)));
        if (!bal.isEmpty()) {
            problems.add(diff("balance on the primaries (as returned)", List.of(row(bal.get(0).get(0))),
                    onPrimaries(c, "SELECT balance FROM accounts WHERE id = ?", acct)));
        }
        check(problems);
        return "ids " + id1 + ", " + id2;
    }

    /**
     * 9. cursor_fetch: setFetchSize(7) in a transaction makes pgjdbc run the query in a named
     * portal and fetch 7 rows per Execute (PortalSuspended in between). Four parts: (a) read
     * all 120 rows, commit; (b) read 10 rows only, close the ResultSet and commit, which sends
     * Close(portal) + Parse/Bind/Execute COMMIT + Sync in one batch, with a 10 s timeout;
     * (c) the same as (b) on a single-shard query; (d) SQL cursors: DECLARE, FETCH ALL, CLOSE
     * in a transaction.
     */
    static String cursorFetch(Ctx c) throws Exception {
        c.step("loading 120 rows");
        ensureCursorRows(c);
        String sql = "SELECT id, owner FROM accounts WHERE id BETWEEN ? AND ? ORDER BY id";
        long lo = cursorLo();
        long hi = cursorHi();
        List<List<String>> expected = query(c.ref(), sql, lo, hi);
        if (expected.size() != CURSOR_ROWS) {
            throw new Fail("the reference database holds " + expected.size() + " cursor rows, expected " + CURSOR_ROWS);
        }
        List<String> problems = new ArrayList<>();

        c.step("(a) reading every row with setFetchSize(7)");
        problems.add(expectOk("(a) every row with setFetchSize(7)", () -> {
            Connection a = c.proxy();
            a.setAutoCommit(false);
            try (PreparedStatement ps = a.prepareStatement(sql)) {
                ps.setFetchSize(7);
                bind(ps, lo, hi);
                try (ResultSet rs = ps.executeQuery()) {
                    String d = diff("rows read", expected, rows(rs));
                    if (d != null) {
                        throw new Fail(d);
                    }
                }
            }
            c.step("(a) commit after reading every row");
            a.commit();
        }));

        c.step("(b) reading 10 rows with setFetchSize(7)");
        problems.add(expectOk("(b) 10 rows with setFetchSize(7), then commit", () -> {
            Connection b = c.proxy();
            b.setAutoCommit(false);
            List<List<String>> partial = new ArrayList<>();
            try (PreparedStatement ps = b.prepareStatement(sql)) {
                ps.setFetchSize(7);
                bind(ps, lo, hi);
                try (ResultSet rs = ps.executeQuery()) {
                    while (partial.size() < 10 && rs.next()) {
                        partial.add(row(rs.getString(1), rs.getString(2)));
                    }
                }
            }
            String d = diff("first 10 rows", expected.subList(0, 10), partial);
            if (d != null) {
                throw new Fail(d);
            }
            // The ResultSet is closed with its portal still suspended: pgjdbc queues a Close of
            // the portal and sends it with the COMMIT (Close, Parse/Bind/Execute COMMIT, Sync).
            c.step("(b) commit with the portal closed in the same batch");
            b.setNetworkTimeout(NET_EXEC, 10_000);
            long t0 = System.nanoTime();
            try {
                b.commit();
            } catch (SQLException e) {
                throw new Fail(String.format("COMMIT after a partial fetch (Close portal + COMMIT in one batch) "
                        + "failed after %.1f s: %s", (System.nanoTime() - t0) / 1e9, describe(e)));
            }
            b.setAutoCommit(true);
            List<List<String>> one = plainQuery(b, "SELECT 1");
            if (!isSingleValue(one, 1)) {
                throw new Fail("SELECT 1 after the commit returned " + one);
            }
        }));

        // (c) the same as (b) on a query that one shard answers (ledger rows of one account,
        // co-located by account_id), so that fetching in batches works in `sharded` too and the
        // Close portal + COMMIT batch is reached there as well.
        c.step("(c) loading 30 ledger rows of one account");
        long acct = cursorLo() + 500;
        for (Connection pr : c.primaries()) {
            update(pr, "DELETE FROM ledger WHERE account_id = ?", acct);
        }
        List<List<String>> ledger = new ArrayList<>();
        Connection l = c.proxy();
        try (PreparedStatement ins = l.prepareStatement(
                "INSERT INTO ledger (account_id, amount, note) VALUES (?, ?, ?)")) {
            for (int k = 0; k < 30; k++) {
                BigDecimal amount = new BigDecimal(k + ".10");
                int n = update(ins, acct, amount, "fetch " + k);
                if (n != 1) {
                    throw new Fail("(c) setup INSERT into ledger reported " + n + " rows");
                }
                ledger.add(row(amount, "fetch " + k));
            }
        }
        c.step("(c) reading 10 ledger rows with setFetchSize(7)");
        problems.add(expectOk("(c) 10 rows of a single-shard query with setFetchSize(7), then commit", () -> {
            Connection b = c.proxy();
            b.setAutoCommit(false);
            List<List<String>> partial = new ArrayList<>();
            try (PreparedStatement ps = b.prepareStatement(
                    "SELECT amount, note FROM ledger WHERE account_id = ? ORDER BY amount")) {
                ps.setFetchSize(7);
                ps.setLong(1, acct);
                try (ResultSet rs = ps.executeQuery()) {
                    while (partial.size() < 10 && rs.next()) {
                        partial.add(row(rs.getString(1), rs.getString(2)));
                    }
                }
            }
            String d = diff("first 10 rows", ledger.subList(0, 10), partial);
            if (d != null) {
                throw new Fail(d);
            }
            c.step("(c) commit with the portal closed in the same batch");
            b.setNetworkTimeout(NET_EXEC, 10_000);
            long t0 = System.nanoTime();
            try {
                b.commit();
            } catch (SQLException e) {
                throw new Fail(String.format("COMMIT after a partial fetch (Close portal + COMMIT in one batch) "
                        + "failed after %.1f s: %s", (System.nanoTime() - t0) / 1e9, describe(e)));
            }
            b.setAutoCommit(true);
            List<List<String>> one = plainQuery(b, "SELECT 1");
            if (!isSingleValue(one, 1)) {
                throw new Fail("SELECT 1 after the commit returned " + one);
            }
        }));

        c.step("(d) DECLARE / FETCH ALL / CLOSE");
        problems.add(expectOk("(d) SQL cursor", () -> {
            Connection d = c.proxy();
            d.setAutoCommit(false);
            try (Statement st = d.createStatement()) {
                st.execute("DECLARE c CURSOR FOR SELECT count(*) FROM accounts WHERE id BETWEEN " + lo + " AND " + hi);
                try (ResultSet rs = st.executeQuery("FETCH ALL FROM c")) {
                    List<List<String>> r = rows(rs);
                    if (!isSingleValue(r, CURSOR_ROWS)) {
                        throw new Fail("FETCH ALL FROM c returned " + r + ", expected [[" + CURSOR_ROWS + "]]");
                    }
                }
                st.execute("CLOSE c");
            }
            d.commit();
        }));
        check(problems);
        return "";
    }

    // --- COPY -----------------------------------------------------------

    /** One COPY record: the key it belongs to and its bytes in a comparable form. */
    record CopyRecord(long id, String text) {
    }

    /** Records of COPY text or CSV output (one per line; the id is the first field). */
    static List<CopyRecord> textRecords(byte[] out, char delimiter) {
        List<CopyRecord> recs = new ArrayList<>();
        for (String line : new String(out, StandardCharsets.UTF_8).split("\n")) {
            if (line.isEmpty()) {
                continue;
            }
            int i = line.indexOf(delimiter);
            recs.add(new CopyRecord(Long.parseLong(i < 0 ? line : line.substring(0, i)), line));
        }
        return recs;
    }

    static final byte[] BINARY_SIGNATURE = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', (byte) 0xFF, '\r', '\n', 0};

    /** Records of COPY binary output (fields as hex; the id is the first field, an int8). */
    static List<CopyRecord> binaryRecords(byte[] out) throws Fail {
        ByteBuffer bb = ByteBuffer.wrap(out);
        try {
            byte[] sig = new byte[BINARY_SIGNATURE.length];
            bb.get(sig);
            if (!Arrays.equals(sig, BINARY_SIGNATURE)) {
                throw new Fail("binary COPY output without the PGCOPY signature");
            }
            bb.getInt();
            int ext = bb.getInt();
            bb.position(bb.position() + ext);
            List<CopyRecord> recs = new ArrayList<>();
            while (true) {
                short n = bb.getShort();
                if (n == -1) {
                    break;
                }
                StringBuilder sb = new StringBuilder();
                long id = 0;
                for (int f = 0; f < n; f++) {
                    int len = bb.getInt();
                    if (f > 0) {
                        sb.append('|');
                    }
                    if (len < 0) {
                        sb.append("NULL");
                        continue;
                    }
                    byte[] v = new byte[len];
                    bb.get(v);
                    if (f == 0) {
                        id = ByteBuffer.wrap(v).getLong();
                    }
                    for (byte x : v) {
                        sb.append(String.format("%02x", x));
                    }
                }
                recs.add(new CopyRecord(id, sb.toString()));
            }
            if (bb.hasRemaining()) {
                throw new Fail("binary COPY output: " + bb.remaining() + " bytes after the trailer at byte "
                        + bb.position() + " (of " + out.length + "; PGCOPY signatures at bytes "
                        + signatures(out) + ")");
            }
            return recs;
        } catch (RuntimeException e) {
            throw new Fail("binary COPY output malformed at byte " + bb.position() + " (of " + out.length
                    + "; PGCOPY signatures at bytes " + signatures(out) + "): " + e);
        }
    }

    /** Where the binary COPY signature occurs in `out` (once, at 0, in a well-formed stream). */
    static List<Integer> signatures(byte[] out) {
        List<Integer> at = new ArrayList<>();
        for (int i = 0; i + BINARY_SIGNATURE.length <= out.length; i++) {
            if (Arrays.equals(out, i, i + BINARY_SIGNATURE.length, BINARY_SIGNATURE, 0, BINARY_SIGNATURE.length)) {
                at.add(i);
            }
        }
        return at;
    }

    /** PostgreSQL's binary numeric: ndigits, weight, sign, dscale, base-10000 digits. */
    static byte[] numericBinary(BigDecimal v) throws IOException {
        int dscale = Math.max(v.scale(), 0);
        String plain = v.abs().setScale(dscale).toPlainString();
        int dot = plain.indexOf('.');
        String intPart = (dot < 0 ? plain : plain.substring(0, dot)).replaceFirst("^0+", "");
        String frac = dot < 0 ? "" : plain.substring(dot + 1);
        while (intPart.length() % 4 != 0) {
            intPart = "0" + intPart;
        }
        while (frac.length() % 4 != 0) {
            frac = frac + "0";
        }
        List<Integer> digits = new ArrayList<>();
        String all = intPart + frac;
        for (int i = 0; i < all.length(); i += 4) {
            digits.add(Integer.parseInt(all.substring(i, i + 4)));
        }
        int weight = intPart.length() / 4 - 1;
        while (!digits.isEmpty() && digits.get(0) == 0) {
            digits.remove(0);
            weight--;
        }
        while (!digits.isEmpty() && digits.get(digits.size() - 1) == 0) {
            digits.remove(digits.size() - 1);
        }
        if (digits.isEmpty()) {
            weight = 0;
        }
        ByteArrayOutputStream bo = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(bo);
        d.writeShort(digits.size());
        d.writeShort(weight);
        d.writeShort(v.signum() < 0 ? 0x4000 : 0);
        d.writeShort(dscale);
        for (int x : digits) {
            d.writeShort(x);
        }
        return bo.toByteArray();
    }

    /** COPY binary input of accounts rows (id, owner, currency, balance), built by hand. */
    static byte[] binaryCopyData(List<List<String>> rows) throws IOException {
        ByteArrayOutputStream bo = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(bo);
        d.write(BINARY_SIGNATURE);
        d.writeInt(0);
        d.writeInt(0);
        for (List<String> r : rows) {
            d.writeShort(4);
            d.writeInt(8);
            d.writeLong(Long.parseLong(r.get(0)));
            for (int i = 1; i <= 2; i++) {
                byte[] s = r.get(i).getBytes(StandardCharsets.UTF_8);
                d.writeInt(s.length);
                d.write(s);
            }
            byte[] n = numericBinary(new BigDecimal(r.get(3)));
            d.writeInt(n.length);
            d.write(n);
        }
        d.writeShort(-1);
        return bo.toByteArray();
    }

    static byte[] copyOut(Connection c, String sql) throws SQLException, IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        c.unwrap(PGConnection.class).getCopyAPI().copyOut(sql, out);
        return out.toByteArray();
    }

    static List<CopyRecord> records(String format, byte[] out) throws Fail {
        switch (format) {
            case "binary":
                return binaryRecords(out);
            case "csv":
                return textRecords(out, ',');
            default:
                return textRecords(out, '\t');
        }
    }

    /** `records` of [lo, hi] only, by id. */
    static List<String> inRange(List<CopyRecord> recs, long lo, long hi) {
        List<CopyRecord> l = new ArrayList<>();
        for (CopyRecord r : recs) {
            if (r.id >= lo && r.id <= hi) {
                l.add(r);
            }
        }
        l.sort(Comparator.comparingLong(CopyRecord::id));
        List<String> out = new ArrayList<>();
        for (CopyRecord r : l) {
            out.add(r.text);
        }
        return out;
    }

    /**
     * 10-12: CopyManager.copyIn of 20 rows through the proxy (and the same bytes into the
     * reference database directly), then copyOut of a COPY (SELECT ... ORDER BY id) and of a
     * whole-table COPY accounts TO STDOUT, each compared with the reference.
     */
    static String copyScenario(Ctx c, String format, byte[] data, List<List<String>> expected) throws Exception {
        String with = format.equals("text") ? "" : " WITH (FORMAT " + format + ")";
        List<String> problems = new ArrayList<>();
        String in = "COPY accounts (id, owner, currency, balance) FROM STDIN" + with;
        c.step("COPY FROM STDIN through the proxy");
        Connection p = c.proxy();
        long n = p.unwrap(PGConnection.class).getCopyAPI().copyIn(in, new ByteArrayInputStream(data));
        if (n != expected.size()) {
            problems.add("COPY FROM STDIN reported " + n + " rows, expected " + expected.size());
        }
        c.step("COPY FROM STDIN into the reference");
        Connection ref = c.ref();
        ref.unwrap(PGConnection.class).getCopyAPI().copyIn(in, new ByteArrayInputStream(data));
        String sel = "SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN ? AND ? ORDER BY id";
        String refCheck = diff("rows in the reference database (the COPY data itself)", expected,
                query(ref, sel, c.lo(), c.hi()));
        if (refCheck != null) {
            throw new Fail(refCheck);
        }
        problems.add(diff("rows on the primaries", expected, accountsOnPrimaries(c)));

        c.step("COPY (SELECT ...) TO STDOUT");
        String outQuery = "COPY (SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN "
                + c.lo() + " AND " + c.hi() + " ORDER BY id) TO STDOUT" + with;
        List<String> refOrdered = new ArrayList<>();
        for (CopyRecord r : records(format, copyOut(ref, outQuery))) {
            refOrdered.add(r.text);
        }
        if (refOrdered.size() != expected.size()) {
            throw new Fail("reference COPY TO STDOUT gave " + refOrdered.size() + " records");
        }
        problems.add(compareThroughProxy("COPY (SELECT ... ORDER BY id) TO STDOUT", refOrdered, () -> {
            List<String> l = new ArrayList<>();
            for (CopyRecord r : records(format, copyOut(p, outQuery))) {
                l.add(r.text);
            }
            return l;
        }));

        c.step("COPY accounts TO STDOUT");
        String whole = "COPY accounts TO STDOUT" + with;
        List<String> refWhole = inRange(records(format, copyOut(ref, whole)), c.lo(), c.hi());
        problems.add(compareThroughProxy("COPY accounts TO STDOUT (rows of this scenario)", refWhole,
                () -> inRange(records(format, copyOut(p, whole)), c.lo(), c.hi())));
        check(problems);
        return "";
    }

    static String copyText(Ctx c) throws Exception {
        List<List<String>> expected = new ArrayList<>();
        StringBuilder data = new StringBuilder();
        for (int k = 0; k < 20; k++) {
            // k = 3: an escaped tab; k = 4: an escaped backslash (COPY text escapes).
            String owner = k == 3 ? "tab\there" : k == 4 ? "back\\slash" : "copy text " + k;
            String wire = owner.replace("\\", "\\\\").replace("\t", "\\t");
            String bal = k + "." + (k % 10) + "0";
            data.append(c.key(k)).append('\t').append(wire).append('\t').append(CURRENCIES[k % 4])
                    .append('\t').append(bal).append('\n');
            expected.add(row(c.key(k), owner, CURRENCIES[k % 4], bal));
        }
        return copyScenario(c, "text", data.toString().getBytes(StandardCharsets.UTF_8), expected);
    }

    static String copyCsv(Ctx c) throws Exception {
        List<List<String>> expected = new ArrayList<>();
        StringBuilder data = new StringBuilder();
        for (int k = 0; k < 20; k++) {
            // k = 2: a quoted field with a comma; k = 5: with doubled quotes.
            String owner = k == 2 ? "Smith, John" : k == 5 ? "say \"hi\"" : "copy csv " + k;
            String wire = k == 2 || k == 5 ? "\"" + owner.replace("\"", "\"\"") + "\"" : owner;
            String bal = k + ".05";
            data.append(c.key(k)).append(',').append(wire).append(',').append(CURRENCIES[k % 4])
                    .append(',').append(bal).append('\n');
            expected.add(row(c.key(k), owner, CURRENCIES[k % 4], bal));
        }
        return copyScenario(c, "csv", data.toString().getBytes(StandardCharsets.UTF_8), expected);
    }

    static String copyBinary(Ctx c) throws Exception {
        List<List<String>> expected = new ArrayList<>();
        for (int k = 0; k < 20; k++) {
            String bal = k == 7 ? "0.00" : k == 8 ? "123456789012.34" : k * 101 + ".50";
            expected.add(row(c.key(k), "copy binary " + k + " ü", CURRENCIES[k % 4], bal));
        }
        return copyScenario(c, "binary", binaryCopyData(expected), expected);
    }

    /**
     * 13. listen_notify: LISTEN on A, NOTIFY and pg_notify on B, A polls with
     * PGConnection.getNotifications(timeoutMs) (which waits on the socket for NotificationResponse).
     */
    static String listenNotify(Ctx c) throws Exception {
        String chan = "chan_" + keyBase;
        Connection a = c.proxy();
        c.step("LISTEN");
        try (Statement st = a.createStatement()) {
            st.execute("LISTEN " + chan);
        } catch (SQLException e) {
            throw new Fail("LISTEN " + chan + " refused: " + describe(e));
        }
        Connection b = c.proxy();
        c.step("NOTIFY and pg_notify");
        try (Statement st = b.createStatement()) {
            st.execute("NOTIFY " + chan + ", 'hello'");
        }
        query(b, "SELECT pg_notify(?, ?)", chan, "second payload");
        c.step("waiting for the notifications");
        Set<String> want = new HashSet<>(List.of("hello", "second payload"));
        List<String> got = new ArrayList<>();
        PGConnection pg = a.unwrap(PGConnection.class);
        long deadline = System.currentTimeMillis() + 10_000;
        while (!got.containsAll(want) && System.currentTimeMillis() < deadline) {
            PGNotification[] ns = pg.getNotifications(500);
            if (ns != null) {
                for (PGNotification n : ns) {
                    if (n.getName().equals(chan)) {
                        got.add(n.getParameter());
                    }
                }
            }
        }
        if (!got.containsAll(want)) {
            throw new Fail("after 10 s connection A received " + got + ", expected " + want);
        }
        return "";
    }

    /** Runs a query that should be cancelled with 57014; null when it was, within `limitMs`. */
    static String expectCancelled(String what, Statement st, String sql, long limitMs) {
        long t0 = System.nanoTime();
        try {
            st.executeQuery(sql).close();
            return String.format("%s: not cancelled, returned after %.1f s", what, (System.nanoTime() - t0) / 1e9);
        } catch (SQLException e) {
            double s = (System.nanoTime() - t0) / 1e9;
            if (!"57014".equals(e.getSQLState())) {
                return String.format("%s: failed after %.1f s with %s, expected SQLSTATE 57014", what, s, describe(e));
            }
            if (s * 1000 > limitMs) {
                return String.format("%s: cancelled only after %.1f s (limit %.1f s)", what, s, limitMs / 1e3);
            }
            return null;
        }
    }

    static String selectOneWorks(String what, Connection p) {
        return expectOk(what, () -> {
            List<List<String>> r = plainQuery(p, "SELECT 1");
            if (!isSingleValue(r, 1)) {
                throw new Fail("returned " + r);
            }
        });
    }

    /**
     * 14. cancel_timeout: Statement.cancel() from another thread (pgjdbc opens a new connection
     * and sends CancelRequest with the BackendKeyData it got at login), setQueryTimeout (pgjdbc's
     * timer thread does the same), and SET statement_timeout (server-side, 57014 from the server).
     */
    static String cancelTimeout(Ctx c) throws Exception {
        Connection p = c.proxy();
        List<String> problems = new ArrayList<>();
        c.step("SELECT pg_sleep(30) cancelled after 0.5 s");
        try (Statement st = p.createStatement()) {
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    st.cancel();
                } catch (Exception e) {
                    System.err.println("cancel_timeout: Statement.cancel() failed: " + describe(e));
                }
            }, "canceller");
            canceller.setDaemon(true);
            canceller.start();
            problems.add(expectCancelled("Statement.cancel() of SELECT pg_sleep(30)", st, "SELECT pg_sleep(30)", 5000));
            canceller.join(5000);
        }
        problems.add(selectOneWorks("SELECT 1 after the cancel", p));
        c.step("setQueryTimeout(1) on SELECT pg_sleep(30)");
        try (Statement st = p.createStatement()) {
            st.setQueryTimeout(1);
            problems.add(expectCancelled("setQueryTimeout(1) on SELECT pg_sleep(30)", st, "SELECT pg_sleep(30)", 5000));
        }
        problems.add(selectOneWorks("SELECT 1 after the query timeout", p));
        c.step("SET statement_timeout = 300");
        try (Statement st = p.createStatement()) {
            st.execute("SET statement_timeout = 300");
            problems.add(expectCancelled("SELECT pg_sleep(5) with statement_timeout = 300", st, "SELECT pg_sleep(5)", 4000));
            c.step("RESET statement_timeout");
            problems.add(expectOk("RESET statement_timeout", () -> st.execute("RESET statement_timeout")));
        }
        problems.add(selectOneWorks("SELECT 1 after RESET statement_timeout", p));
        c.step("SELECT pg_sleep(0.5) after RESET");
        problems.add(expectOk("SELECT pg_sleep(0.5) after RESET statement_timeout",
                () -> plainQuery(p, "SELECT pg_sleep(0.5)")));
        check(problems);
        return "";
    }

    static String hex(byte[] b) {
        if (b == null) {
            return "null";
        }
        StringBuilder sb = new StringBuilder();
        for (byte x : b) {
            sb.append(String.format("%02x", x));
        }
        return sb.toString();
    }

    /**
     * 15. types: every column type bound as a parameter the JDBC way (PGobject for json/jsonb,
     * createArrayOf, BigDecimal, OffsetDateTime, LocalDate, byte[], UUID, double, boolean,
     * setNull) and read back by key in a transaction.
     */
    static String types(Ctx c) throws Exception {
        Connection p = c.proxy();
        String json = "{\"k\": [1, 2.5, \"x\\\"y\"], \"u\": \"\u00fc\"}";
        String jsonbIn = "{\"b\": [1, 2.5, null], \"a\": {\"x\": \"y\"}}";
        String jsonbOut = "{\"a\": {\"x\": \"y\"}, \"b\": [1, 2.5, null]}";
        Integer[] ints = {1, -2, Integer.MAX_VALUE, null};
        String[] texts = {"plain", "with,comma", "quote\"and\\backslash", "", null, "NULL", "{brace}"};
        BigDecimal num = new BigDecimal("123456789012345678901234.567890");
        OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 23, 59, 58, 123456000, ZoneOffset.ofHoursMinutes(5, 30));
        LocalDate date = LocalDate.of(2000, 2, 29);
        byte[] bytes = new byte[256];
        for (int i = 0; i < 256; i++) {
            bytes[i] = (byte) i;
        }
        UUID uuid = UUID.fromString("123e4567-e89b-12d3-a456-426614174000");
        double f = 0.1 + 0.2;

        c.step("INSERT of the typed row");
        String ins = "INSERT INTO typed (id, j, jb, ints, texts, n, ts, d, b, u, f, flag) "
                + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        try (PreparedStatement ps = p.prepareStatement(ins)) {
            PGobject j = new PGobject();
            j.setType("json");
            j.setValue(json);
            PGobject jb = new PGobject();
            jb.setType("jsonb");
            jb.setValue(jsonbIn);
            ps.setLong(1, c.key(0));
            ps.setObject(2, j);
            ps.setObject(3, jb);
            ps.setArray(4, p.createArrayOf("int4", ints));
            ps.setArray(5, p.createArrayOf("text", texts));
            ps.setBigDecimal(6, num);
            ps.setObject(7, ts);
            ps.setObject(8, date);
            ps.setBytes(9, bytes);
            ps.setObject(10, uuid);
            ps.setDouble(11, f);
            ps.setBoolean(12, true);
            String e = expectCount("INSERT of the typed row", 1, ps.executeUpdate());
            if (e != null) {
                throw new Fail(e);
            }
        }
        c.step("INSERT of the NULL row");
        try (PreparedStatement ps = p.prepareStatement(ins)) {
            ps.setLong(1, c.key(1));
            int[] sqlTypes = {Types.OTHER, Types.OTHER, Types.ARRAY, Types.ARRAY, Types.NUMERIC,
                Types.TIMESTAMP_WITH_TIMEZONE, Types.DATE, Types.BINARY, Types.OTHER, Types.DOUBLE, Types.BOOLEAN};
            for (int i = 0; i < sqlTypes.length; i++) {
                ps.setNull(i + 2, sqlTypes[i]);
            }
            String e = expectCount("INSERT of the NULL row", 1, ps.executeUpdate());
            if (e != null) {
                throw new Fail(e);
            }
        }

        List<String> problems = new ArrayList<>();
        p.setAutoCommit(false);
        String sel = "SELECT j, jb, ints, texts, n, ts, d, b, u, f, flag FROM typed WHERE id = ?";
        c.step("reading the typed row back in a transaction (its first statement)");
        try (PreparedStatement ps = p.prepareStatement(sel)) {
            ps.setLong(1, c.key(0));
            try (ResultSet rs = ps.executeQuery()) {
                if (!rs.next()) {
                    throw new Fail("the typed row " + c.key(0) + " was not found (read in a transaction)");
                }
                Map<String, Object[]> cmp = new LinkedHashMap<>();
                cmp.put("json", new Object[] {json, rs.getString(1)});
                cmp.put("jsonb", new Object[] {jsonbOut, rs.getString(2)});
                Array ia = rs.getArray(3);
                cmp.put("int[]", new Object[] {Arrays.toString(ints),
                    ia == null ? null : Arrays.toString((Object[]) ia.getArray())});
                Array ta = rs.getArray(4);
                cmp.put("text[]", new Object[] {Arrays.toString(texts),
                    ta == null ? null : Arrays.toString((Object[]) ta.getArray())});
                BigDecimal n = rs.getBigDecimal(5);
                cmp.put("numeric", new Object[] {num.toPlainString(), n == null ? null : n.toPlainString()});
                OffsetDateTime t = rs.getObject(6, OffsetDateTime.class);
                cmp.put("timestamptz", new Object[] {ts.toInstant(), t == null ? null : t.toInstant()});
                cmp.put("date", new Object[] {date, rs.getObject(7, LocalDate.class)});
                cmp.put("bytea", new Object[] {hex(bytes), hex(rs.getBytes(8))});
                cmp.put("uuid", new Object[] {uuid, rs.getObject(9, UUID.class)});
                double fr = rs.getDouble(10);
                cmp.put("float8", new Object[] {Double.toString(f), rs.wasNull() ? null : Double.toString(fr)});
                boolean fl = rs.getBoolean(11);
                cmp.put("boolean", new Object[] {"true", rs.wasNull() ? null : Boolean.toString(fl)});
                for (Map.Entry<String, Object[]> e : cmp.entrySet()) {
                    Object sent = e.getValue()[0];
                    Object read = e.getValue()[1];
                    if (!Objects.equals(sent, read)) {
                        problems.add(e.getKey() + ": sent " + clip(sent) + ", read back " + clip(read));
                    }
                }
                if (rs.next()) {
                    problems.add("more than one row for key " + c.key(0));
                }
            }
            c.step("reading the NULL row back in a transaction");
            ps.setLong(1, c.key(1));
            try (ResultSet rs = ps.executeQuery()) {
                List<List<String>> r = rows(rs);
                List<String> nulls = Arrays.asList(new String[11]);
                if (r.size() != 1 || !r.get(0).equals(nulls)) {
                    problems.add("NULL row " + c.key(1) + ": read back " + r + ", expected one row of 11 NULLs");
                }
            }
        }
        p.commit();
        check(problems);
        return "";
    }

    /**
     * 16. metadata: DatabaseMetaData.getTables and getColumns (pgjdbc's catalog queries on
     * pg_catalog, sent through the proxy like any query).
     */
    static String metadata(Ctx c) throws Exception {
        Connection p = c.proxy();
        DatabaseMetaData md = p.getMetaData();
        List<String> problems = new ArrayList<>();
        c.step("getTables");
        List<String> tables = new ArrayList<>();
        try (ResultSet rs = md.getTables(null, null, "accounts", null)) {
            while (rs.next()) {
                tables.add(rs.getString("TABLE_SCHEM") + "." + rs.getString("TABLE_NAME") + " "
                        + rs.getString("TABLE_TYPE"));
            }
        }
        problems.add(diff("getTables(null, null, \"accounts\", null)", List.of("public.accounts TABLE"), tables));
        c.step("getColumns");
        List<String> cols = new ArrayList<>();
        try (ResultSet rs = md.getColumns(null, "public", "accounts", null)) {
            while (rs.next()) {
                cols.add(rs.getInt("ORDINAL_POSITION") + " " + rs.getString("COLUMN_NAME") + " "
                        + rs.getString("TYPE_NAME") + " " + rs.getString("IS_NULLABLE"));
            }
        }
        problems.add(diff("getColumns(null, \"public\", \"accounts\", null)",
                List.of("1 id int8 NO", "2 owner text NO", "3 currency text NO", "4 balance numeric NO"), cols));
        c.step("getPrimaryKeys");
        List<String> pk = new ArrayList<>();
        try (ResultSet rs = md.getPrimaryKeys(null, "public", "accounts")) {
            while (rs.next()) {
                pk.add(rs.getString("COLUMN_NAME"));
            }
        }
        problems.add(diff("getPrimaryKeys(null, \"public\", \"accounts\")", List.of("id"), pk));
        check(problems);
        return md.getDatabaseProductName() + " " + md.getDatabaseProductVersion();
    }

    /**
     * 17. read_your_writes: SET shardgate.consistency = session, then an autocommit INSERT and
     * at once a SELECT of it (both prepared statements), 20 times, no retry.
     */
    static String readYourWrites(Ctx c) throws Exception {
        if (topology.equals("single")) {
            return "skipped in single";
        }
        Connection p = c.proxy();
        c.step("SET shardgate.consistency = session");
        try (Statement st = p.createStatement()) {
            st.execute("SET shardgate.consistency = session");
        }
        List<String> problems = new ArrayList<>();
        try (PreparedStatement ins = p.prepareStatement(INSERT_ACCOUNT);
                PreparedStatement sel = p.prepareStatement("SELECT owner FROM accounts WHERE id = ?")) {
            for (int k = 0; k < 20; k++) {
                c.step("INSERT and SELECT " + k);
                problems.add(expectCount("INSERT of " + c.key(k), 1,
                        update(ins, c.key(k), "ryw " + k, "USD", BigDecimal.ONE)));
                sel.setLong(1, c.key(k));
                try (ResultSet rs = sel.executeQuery()) {
                    problems.add(diff("SELECT right after INSERT of " + c.key(k), List.of(row("ryw " + k)), rows(rs)));
                }
            }
        }
        check(problems);
        return "";
    }

    /**
     * 18. cross_shard_read: aggregates, GROUP BY, ORDER BY ... LIMIT/OFFSET and a join with the
     * reference table over the cursor rows, as plain Statements and as PreparedStatements,
     * compared with the reference database.
     */
    static String crossShardRead(Ctx c) throws Exception {
        c.step("making sure the cursor rows are loaded");
        ensureCursorRows(c);
        long lo = cursorLo();
        long hi = lo + 999;
        String[] queries = {
            "SELECT count(*), sum(balance), min(id), max(id) FROM accounts WHERE id BETWEEN ? AND ?",
            "SELECT currency, count(*) FROM accounts WHERE id BETWEEN ? AND ? GROUP BY currency ORDER BY currency",
            "SELECT id FROM accounts WHERE id BETWEEN ? AND ? ORDER BY balance DESC, id LIMIT 5 OFFSET 2",
            "SELECT a.id, a.owner, c.name FROM accounts a JOIN currencies c ON c.code = a.currency "
                + "WHERE a.id BETWEEN ? AND ? ORDER BY a.id",
            "SELECT s.currency, s.n, s.total FROM (SELECT currency, count(*) AS n, sum(balance) AS total "
                + "FROM accounts WHERE id BETWEEN ? AND ? GROUP BY currency) s ORDER BY s.currency",
        };
        Connection ref = c.ref();
        Connection p = c.proxy();
        List<String> problems = new ArrayList<>();
        for (String q : queries) {
            List<List<String>> expected = query(ref, q, lo, hi);
            String plain = q.replaceFirst("\\?", Long.toString(lo)).replaceFirst("\\?", Long.toString(hi));
            c.step("plain: " + plain);
            problems.add(compareThroughProxy("plain " + plain, expected, () -> plainQuery(p, plain)));
            c.step("prepared: " + q);
            try (PreparedStatement ps = p.prepareStatement(q)) {
                problems.add(compareThroughProxy("prepared " + q, expected, () -> {
                    bind(ps, lo, hi);
                    try (ResultSet rs = ps.executeQuery()) {
                        return rows(rs);
                    }
                }));
            }
        }
        check(problems);
        return "";
    }

    /** Sessions of SG_DATABASE idle in a transaction, per primary ("primary N pid P"). */
    static Set<String> idleInTransaction(Ctx c) throws SQLException {
        Set<String> out = new HashSet<>();
        List<Connection> ps = c.primaries();
        for (int i = 0; i < ps.size(); i++) {
            for (List<String> r : query(ps.get(i),
                    "SELECT pid FROM pg_stat_activity WHERE datname = ? AND state LIKE 'idle in transaction%'",
                    database)) {
                out.add("primary " + i + " pid " + r.get(0));
            }
        }
        return out;
    }

    /**
     * 19. client_killed: a child JVM opens a transaction through the proxy (setAutoCommit(false),
     * INSERT), prints READY and sleeps; it is killed with SIGKILL (destroyForcibly). The proxy
     * must roll the transaction back: the row absent and no session idle in transaction.
     */
    static String clientKilled(Ctx c) throws Exception {
        long key = c.key(0);
        Set<String> before = idleInTransaction(c);
        String java = ProcessHandle.current().info().command()
                .orElse(System.getProperty("java.home") + "/bin/java");
        c.step("starting the child");
        ProcessBuilder pb = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"),
                "Conformance", "hold", Long.toString(key));
        pb.redirectError(ProcessBuilder.Redirect.INHERIT);
        Process child = pb.start();
        c.procs.add(child);
        BlockingQueue<String> lines = new LinkedBlockingQueue<>();
        Thread reader = new Thread(() -> {
            try (BufferedReader r = new BufferedReader(
                    new InputStreamReader(child.getInputStream(), StandardCharsets.UTF_8))) {
                String l;
                while ((l = r.readLine()) != null) {
                    lines.add(l);
                }
            } catch (IOException e) {
                // the child is gone
            }
            lines.add("EOF");
        }, "child-reader");
        reader.setDaemon(true);
        reader.start();
        c.step("waiting for READY");
        String inserted = null;
        long deadline = System.currentTimeMillis() + 30_000;
        while (true) {
            String l = lines.poll(Math.max(1, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS);
            if (l == null || l.equals("EOF") || l.startsWith("ERROR")) {
                child.destroyForcibly();
                throw new Fail("the child did not print READY: " + (l == null ? "no answer within 30 s" : l));
            }
            if (l.startsWith("INSERTED ")) {
                inserted = l.substring(9);
            }
            if (l.equals("READY")) {
                break;
            }
        }
        List<String> problems = new ArrayList<>();
        if (!"1".equals(inserted)) {
            problems.add("the child's INSERT in its transaction reported " + inserted + " rows affected, expected 1");
        }
        c.step("looking for the child's open transaction on the primaries");
        Set<String> held = new HashSet<>();
        long seenUntil = System.currentTimeMillis() + 5_000;
        while (System.currentTimeMillis() < seenUntil) {
            held = idleInTransaction(c);
            held.removeAll(before);
            if (!held.isEmpty()) {
                break;
            }
            Thread.sleep(100);
        }
        if (held.isEmpty()) {
            problems.add("no session idle in transaction appeared on any primary while the child held its transaction");
        }
        c.step("SIGKILL of the child");
        child.destroyForcibly();
        if (!child.waitFor(10, TimeUnit.SECONDS)) {
            throw new Fail("the child did not die within 10 s of SIGKILL");
        }
        long killed = System.nanoTime();
        c.step("waiting for the rollback on the primaries");
        List<List<String>> left;
        Set<String> idle;
        long until = System.currentTimeMillis() + 10_000;
        while (true) {
            left = onPrimaries(c, "SELECT id FROM accounts WHERE id = ?", key);
            idle = idleInTransaction(c);
            idle.removeAll(before);
            if ((left.isEmpty() && idle.isEmpty()) || System.currentTimeMillis() >= until) {
                break;
            }
            Thread.sleep(200);
        }
        if (!left.isEmpty()) {
            problems.add("10 s after the kill the row " + key + " is on the primaries");
        }
        if (!idle.isEmpty()) {
            problems.add("10 s after the kill sessions are still idle in transaction: " + idle);
        }
        check(problems);
        String detail = String.format("held transaction %s gone %.1f s after the kill", held,
                (System.nanoTime() - killed) / 1e9);
        if (!before.isEmpty()) {
            detail += "; sessions idle in transaction before the child started (not counted): " + before;
        }
        return detail;
    }

    /** client_killed's child: hold a transaction with one INSERT open until killed. */
    static void hold(long key) {
        try {
            Connection p = connect(host + ":" + port, database, "");
            p.setAutoCommit(false);
            int n = update(p, INSERT_ACCOUNT, key, "held by a killed client", "USD", BigDecimal.ONE);
            System.out.println("INSERTED " + n);
            System.out.println("READY");
            System.out.flush();
            Thread.sleep(600_000);
        } catch (Exception e) {
            System.out.println("ERROR " + describe(e).replace('\n', ' '));
            System.out.flush();
            System.exit(1);
        }
    }

    /**
     * 21. multi_statement: Statement.execute of strings of several statements (pgjdbc splits
     * them and sends them in one batch with one Sync), going to different shards where sharded:
     * each runs; an error in one undoes the whole string.
     */
    static String multiStatement(Ctx c) throws Exception {
        Connection p = c.proxy();
        List<String> problems = new ArrayList<>();
        java.util.function.Function<long[], String> ins = ks -> {
            StringBuilder v = new StringBuilder();
            for (long k : ks) {
                v.append(v.length() == 0 ? "" : ", ").append("(").append(c.key((int) k)).append(", 'multi', 'USD', 1)");
            }
            return "INSERT INTO accounts (id, owner, currency, balance) VALUES " + v;
        };
        c.step("a string of three statements");
        problems.add(expectOk("the string of three statements", () -> {
            try (Statement st = p.createStatement()) {
                st.execute(ins.apply(new long[] {0}) + "; " + ins.apply(new long[] {1, 2})
                        + "; UPDATE accounts SET balance = 5 WHERE id = " + c.key(0));
            }
        }));
        c.step("a string failing in its second statement");
        problems.add(expectState("the string with a duplicate", "23505", () -> {
            try (Statement st = p.createStatement()) {
                st.execute(ins.apply(new long[] {3}) + "; " + ins.apply(new long[] {0}));
            }
        }));
        problems.add(expectOk("SELECT 1 after the failed string", () -> plainQuery(p, "SELECT 1")));
        List<List<String>> expected = new ArrayList<>();
        expected.add(row(c.key(0), "multi", "USD", new BigDecimal("5.00")));
        expected.add(row(c.key(1), "multi", "USD", new BigDecimal("1.00")));
        expected.add(row(c.key(2), "multi", "USD", new BigDecimal("1.00")));
        problems.add(diff("accounts on the primaries", expected, accountsOnPrimaries(c)));
        check(problems);
        return "";
    }

    /**
     * 20. backend_terminated: the server backend behind the client's connection is terminated
     * directly on the primary; the next 5 statements on the same pgjdbc connection (autocommit)
     * must all succeed, the proxy not handing out the dead server connection.
     */
    static String backendTerminated(Ctx c) throws Exception {
        Connection p = c.proxy();
        c.step("SELECT pg_backend_pid()");
        List<List<String>> r = plainQuery(p, "/* shardgate: consistency=strong */ SELECT pg_backend_pid()");
        if (r.size() != 1) {
            throw new Fail("SELECT pg_backend_pid() returned " + r);
        }
        long pid = Long.parseLong(r.get(0).get(0));
        c.step("pg_terminate_backend on the primaries");
        int terminated = 0;
        for (Connection pr : c.primaries()) {
            List<List<String>> t = query(pr,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ? AND datname = ?",
                    (int) pid, database);
            if (t.size() == 1 && "t".equals(t.get(0).get(0))) {
                terminated++;
            }
        }
        if (terminated != 1) {
            throw new Fail("backend pid " + pid + " terminated on " + terminated + " primaries, expected 1");
        }
        Thread.sleep(200);
        List<SqlAction> statements = List.of(
            () -> plainQuery(p, "SELECT 1"),
            () -> {
                int n = update(p, INSERT_ACCOUNT, c.key(0), "after terminate", "GBP", BigDecimal.ONE);
                if (n != 1) {
                    throw new Fail("INSERT reported " + n + " rows");
                }
            },
            () -> query(p, "SELECT current_database()"),
            () -> {
                int n = update(p, "UPDATE accounts SET balance = ? WHERE id = ?", new BigDecimal("7.00"), c.key(0));
                if (n != 1) {
                    throw new Fail("UPDATE reported " + n + " rows");
                }
            },
            () -> plainQuery(p, "SELECT 3"));
        String[] names = {"SELECT 1", "INSERT", "SELECT current_database()", "UPDATE", "SELECT 3"};
        List<String> problems = new ArrayList<>();
        for (int i = 0; i < statements.size(); i++) {
            c.step("statement " + (i + 1) + " after the terminate: " + names[i]);
            problems.add(expectOk("statement " + (i + 1) + " (" + names[i] + ") after the terminate",
                    statements.get(i)));
        }
        if (noProxy()) {
            // Plain PostgreSQL: the client's own backend is gone, so every statement fails.
            if (problems.get(0) == null) {
                throw new Fail("no proxy: the first statement after pg_terminate_backend succeeded");
            }
            return "no proxy: the connection died with its backend, as expected (" + problems.get(0) + ")";
        }
        problems.add(diff("the row written after the terminate, on the primaries",
                List.of(row(c.key(0), "after terminate", "GBP", "7.00")), accountsOnPrimaries(c)));
        if (problems.stream().anyMatch(Objects::nonNull)) {
            c.step("waiting until the proxy reaches the primary again (for the next program)");
            waitForPrimary(c);
        }
        check(problems);
        return "terminated backend " + pid;
    }

    /** Polls a primary-bound statement on fresh connections for up to 10 s until it succeeds. */
    static void waitForPrimary(Ctx c) throws InterruptedException {
        long until = System.currentTimeMillis() + 10_000;
        while (System.currentTimeMillis() < until) {
            try (Connection p = connect(host + ":" + port, database, "")) {
                plainQuery(p, "/* shardgate: consistency=strong */ SELECT 1");
                return;
            } catch (SQLException e) {
                Thread.sleep(250);
            }
        }
    }

    // ------------------------------------------------------------------
    // Runner
    // ------------------------------------------------------------------

    static String json(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char ch = s.charAt(i);
            if (Character.isHighSurrogate(ch) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1))) {
                sb.append(String.format("\\u%04x\\u%04x", (int) ch, (int) s.charAt(i + 1)));
                i++;
            } else if (Character.isSurrogate(ch)) {
                sb.append("\\ufffd");
            } else if (ch == '"') {
                sb.append("\\\"");
            } else if (ch == '\\') {
                sb.append("\\\\");
            } else if (ch == '\n') {
                sb.append("\\n");
            } else if (ch == '\r') {
                sb.append("\\r");
            } else if (ch == '\t') {
                sb.append("\\t");
            } else if (ch < 0x20 || ch > 0x7e) {
                sb.append(String.format("\\u%04x", (int) ch));
            } else {
                sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }

    static synchronized void report(String scenario, boolean ok, String detail) {
        System.out.println("{\"scenario\": " + json(scenario) + ", \"ok\": " + ok + ", \"detail\": "
                + json(detail == null ? "" : detail) + "}");
        System.out.flush();
    }

    /** Runs one scenario in its own thread with the 60 s limit; reports it. */
    static void runScenario(int index, Scenario s) throws InterruptedException {
        Ctx ctx = new Ctx(index);
        AtomicReference<Object[]> result = new AtomicReference<>();
        long t0 = System.nanoTime();
        Thread t = new Thread(() -> {
            Object[] r;
            try {
                r = new Object[] {true, s.body().run(ctx)};
            } catch (Fail f) {
                r = new Object[] {false, f.getMessage()};
            } catch (Throwable e) {
                r = new Object[] {false, "during " + ctx.step + ": " + describe(e)};
            }
            result.compareAndSet(null, r);
        }, "scenario-" + s.name());
        t.setDaemon(true);
        t.start();
        t.join(SCENARIO_LIMIT_MS);
        if (t.isAlive()) {
            result.compareAndSet(null, new Object[] {false,
                "timed out after " + SCENARIO_LIMIT_MS / 1000 + " s during: " + ctx.step});
            ctx.abortAll();
            t.interrupt();
            t.join(5000);
        }
        ctx.closeAll();
        Object[] r = result.get();
        System.err.printf("%s: %s in %.1f s%n", s.name(), (Boolean) r[0] ? "ok" : "FAIL", (System.nanoTime() - t0) / 1e9);
        report(s.name(), (Boolean) r[0], (String) r[1]);
    }

    /** Deletes every row of this program's key range, directly on every primary and in the reference. */
    static void cleanup() {
        List<String[]> targets = new ArrayList<>();
        for (String a : primaries) {
            targets.add(new String[] {a, database});
        }
        targets.add(new String[] {refAddr, refDatabase});
        for (String[] t : targets) {
            try (Connection c = connect(t[0], t[1], "")) {
                long lo = keyBase;
                long hi = keyBase + 999_999;
                update(c, "DELETE FROM accounts WHERE id BETWEEN ? AND ?", lo, hi);
                update(c, "DELETE FROM ledger WHERE account_id BETWEEN ? AND ?", lo, hi);
                update(c, "DELETE FROM typed WHERE id BETWEEN ? AND ?", lo, hi);
            } catch (SQLException e) {
                System.err.println("cleanup of " + t[0] + "/" + t[1] + " failed: " + describe(e));
            }
        }
    }

    public static void main(String[] args) throws Exception {
        loadEnv();
        if (args.length == 2 && args[0].equals("hold")) {
            hold(Long.parseLong(args[1]));
            return;
        }
        cleanup();
        List<String> only = Arrays.asList(args);
        for (int i = 0; i < SCENARIOS.length; i++) {
            if (only.isEmpty() || only.contains(SCENARIOS[i].name())) {
                runScenario(i + 1, SCENARIOS[i]);
            }
        }
        System.exit(0);
    }
}
