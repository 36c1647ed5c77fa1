// Creates, changes and lists SCRAM-SHA-512 credentials on a running broker through the Admin API
// (AlterUserScramCredentials / DescribeUserScramCredentials), as the super user `admin`.
// Run by infra/services.sh as a single-file source program on the broker's own classpath (the 4.x Maven artifacts
// have no kafka-configs: org.apache.kafka.tools lives in kafka-tools, which the broker does not need):
//
//   java -cp "<kafka-libs>/*" infra/kafka/ScramAdmin.java <bootstrap> upsert|list|quorum [SASL_PLAINTEXT|PLAINTEXT] < secrets
//
// quorum prints the KRaft quorum (DescribeMetadataQuorum): "leader <node id>" (the active controller), then one
// "voter <id> <log end offset>" line per voter; the chaos suite kills the leader it names.
//
// PLAINTEXT is for the one start of a state that was formatted without authentication (TOLLWAY_KAFKA_AUTH=none).
//
// Secrets come on standard input, never on the command line: the first line is admin's password, then (upsert)
// one "name password" line per principal. Exit status 0 only when every upsert was acknowledged.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.QuorumInfo;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.clients.admin.UserScramCredentialsDescription;

public class ScramAdmin {
    static final int ITERATIONS = 4096;  // Kafka's minimum for SCRAM-SHA-512; the password is random anyway

    public static void main(String[] args) throws Exception {
        if (args.length < 2 || args.length > 3 || !(args[1].equals("upsert") || args[1].equals("list") || args[1].equals("quorum"))) {
            System.err.println("usage: ScramAdmin <bootstrap> upsert|list|quorum [SASL_PLAINTEXT|PLAINTEXT]  (secrets on stdin)");
            System.exit(2);
        }
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String adminPassword = in.readLine();
        if (adminPassword == null || adminPassword.isEmpty()) {
            System.err.println("ScramAdmin: admin's password expected on the first line of stdin");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        String protocol = args.length == 3 ? args[2] : "SASL_PLAINTEXT";
        props.put(AdminClientConfig.SECURITY_PROTOCOL_CONFIG, protocol);
        if (protocol.startsWith("SASL")) {
            props.put("sasl.mechanism", "SCRAM-SHA-512");
            props.put("sasl.jaas.config", "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\""
                    + adminPassword.replace("\\", "\\\\").replace("\"", "\\\"") + "\";");
        }
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        try (Admin admin = Admin.create(props)) {
            if (args[1].equals("quorum")) {
                QuorumInfo quorum = admin.describeMetadataQuorum().quorumInfo().get(30, TimeUnit.SECONDS);
                System.out.println("leader " + quorum.leaderId());
                for (QuorumInfo.ReplicaState voter : quorum.voters())
                    System.out.println("voter " + voter.replicaId() + " " + voter.logEndOffset());
                return;
            }
            if (args[1].equals("list")) {
                Map<String, UserScramCredentialsDescription> all = admin.describeUserScramCredentials().all().get(30, TimeUnit.SECONDS);
                all.keySet().stream().sorted().forEach(System.out::println);
                return;
            }
            List<UserScramCredentialAlteration> alterations = new ArrayList<>();
            ScramCredentialInfo info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS);
            for (String line; (line = in.readLine()) != null; ) {
                line = line.strip();
                if (line.isEmpty()) continue;
                String[] parts = line.split("\\s+", 2);
                if (parts.length != 2) throw new IllegalArgumentException("expected 'name password' on stdin");
                alterations.add(new UserScramCredentialUpsertion(parts[0], info, parts[1]));
            }
            if (alterations.isEmpty()) return;
            admin.alterUserScramCredentials(alterations).all().get(30, TimeUnit.SECONDS);
            for (UserScramCredentialAlteration a : alterations) System.out.println("upserted " + a.user());
        }
    }
}
