// pgjdbc writer for tests/rebalance.rs: writes through shardgate while
// rebalancing jobs move rows and keeps a ledger of what it committed.
// Accounts [SG_KEY_BASE, SG_KEY_BASE + 200) are created with a JDBC batch
// (pgjdbc sends it pipelined); each transfer runs with autocommit off (pgjdbc
// sends BEGIN with the first statement) as a prepared UPDATE and INSERT, then
// commit(); the balance is read back with a prepared SELECT. Stops when the
// file SG_STOP exists; creates SG_READY once its accounts exist. Prints
// {"ledger": {"id": [balance, entries, sum]}, "errors": [...], "transfers": n}.

import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

public class RebalanceWriter {
    static final int ACCOUNTS = 200;

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("SG_HOST") + ":" + System.getenv("SG_PORT")
            + "/" + System.getenv("SG_DATABASE");
        long base = Long.parseLong(System.getenv("SG_KEY_BASE"));
        Path stop = Path.of(System.getenv("SG_STOP"));
        long[][] ledger = new long[ACCOUNTS][3];
        List<String> errors = new ArrayList<>();
        int seq = 0;
        try (Connection c = DriverManager.getConnection(url, System.getenv("SG_USER"), System.getenv("SG_PASSWORD"))) {
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO accounts (id, balance) VALUES (?, 0)")) {
                for (int i = 0; i < ACCOUNTS; i++) {
                    ins.setLong(1, base + i);
                    ins.addBatch();
                }
                ins.executeBatch();
            }
            Files.writeString(Path.of(System.getenv("SG_READY")), "ready\n");
            c.setAutoCommit(false);
            PreparedStatement update = c.prepareStatement("UPDATE accounts SET balance = balance + ? WHERE id = ?");
            PreparedStatement entry = c.prepareStatement("INSERT INTO entries (account_id, seq, amount) VALUES (?, ?, ?)");
            PreparedStatement read = c.prepareStatement("SELECT balance FROM accounts WHERE id = ?");
            Random rnd = new Random(base);
            while (!Files.exists(stop) && errors.isEmpty()) {
                int i = rnd.nextInt(ACCOUNTS);
                long k = base + i;
                long d = rnd.nextInt(100) + 1;
                seq++;
                try {
                    update.setLong(1, d);
                    update.setLong(2, k);
                    update.executeUpdate();
                    entry.setLong(1, k);
                    entry.setLong(2, seq);
                    entry.setLong(3, d);
                    entry.executeUpdate();
                    c.commit();
                } catch (SQLException e) {
                    errors.add("pgjdbc transfer on " + k + ": " + e.getSQLState() + " " + e.getMessage());
                    c.rollback();
                    break;
                }
                ledger[i][0] += d;
                ledger[i][1] += 1;
                ledger[i][2] += d;
                read.setLong(1, k);
                try (ResultSet r = read.executeQuery()) {
                    r.next();
                    long got = r.getLong(1);
                    if (got != ledger[i][0]) {
                        errors.add("pgjdbc read back " + k + ": " + got + ", wrote " + ledger[i][0]);
                    }
                }
                c.commit();
            }
        }
        StringBuilder out = new StringBuilder("{\"ledger\": {");
        for (int i = 0; i < ACCOUNTS; i++) {
            if (i > 0) out.append(", ");
            out.append('"').append(base + i).append("\": [").append(ledger[i][0]).append(", ")
                .append(ledger[i][1]).append(", ").append(ledger[i][2]).append(']');
        }
        out.append("}, \"errors\": [");
        for (int i = 0; i < errors.size(); i++) {
            if (i > 0) out.append(", ");
            out.append('"').append(errors.get(i).replace("\\", "\\\\").replace("\"", "\\\"")).append('"');
        }
        out.append("], \"transfers\": ").append(seq).append('}');
        System.out.println(out);
    }
}
