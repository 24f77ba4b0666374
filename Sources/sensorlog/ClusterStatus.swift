import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import SensorLogCore

/// `sensorlog cluster status`: a cluster node's view (`GET /cluster`), as a table.
struct ClusterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "Look at a cluster (sensorlogd --cluster).", subcommands: [Status.self])

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the cluster's members, each partition's owner, epoch and stream end, and each node's lag.",
            discussion: """
                Asks one node over HTTP (GET /cluster, the read role with API keys); any node answers \
                for the whole cluster. Exit 69 when the node cannot be reached, 64 when it is not in \
                a cluster.

                Examples:
                  sensorlog cluster status
                  sensorlog cluster status --url http://10.0.0.2:8080 --api-key "$KEY" --json
                """)

        @Option(help: "A node's HTTP address.")
        var url = "http://127.0.0.1:8080"

        @Option(help: "An API key with the read role (or SENSORLOG_API_KEY).")
        var apiKey: String?

        @Flag(help: "Write the node's JSON as it is.")
        var json = false

        func run() throws {
            let (status, body) = fetch()
            guard status == 200, let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
                let text = String(decoding: body, as: UTF8.self)
                Terminal.fail("\(url)/cluster answered \(status): \(text)", code: status == 404 ? .usage : .unavailable)
            }
            if json {
                Terminal.printJSON(object)
            } else {
                print(Self.table(object))
            }
        }

        private func fetch() -> (Int, Data) {
            guard let endpoint = URL(string: url.hasSuffix("/") ? url + "cluster" : url + "/cluster") else {
                Terminal.fail("--url \(url) is not a URL", code: .usage)
            }
            var request = URLRequest(url: endpoint, timeoutInterval: 10)
            if let key = apiKey ?? ProcessInfo.processInfo.environment["SENSORLOG_API_KEY"] {
                request.setValue(key, forHTTPHeaderField: "X-API-Key")
            }
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var outcome: (Int, Data)?
            nonisolated(unsafe) var failure: (any Error)?
            URLSession.shared.dataTask(with: request) { data, response, error in
                if let response = response as? HTTPURLResponse { outcome = (response.statusCode, data ?? Data()) }
                failure = error
                done.signal()
            }.resume()
            done.wait()
            guard let outcome else { Terminal.fail("cannot reach \(url): \(failure.map { "\($0)" } ?? "no answer")", code: .unavailable) }
            return outcome
        }

        static func table(_ s: [String: Any]) -> String {
            let members = (s["members"] as? [String] ?? []).joined(separator: ", ")
            var lines = ["node \(s["node"] as? String ?? "?") (NATS \(s["nats"] as? String ?? "not connected")); members: \(members)", ""]
            lines.append("partition  owner         epoch  stream start  stream end  leader")
            for p in s["partitions"] as? [[String: Any]] ?? [] {
                lines.append(String(format: "%9d  %-12@  %5lld  %12lld  %10lld  %@", p["partition"] as? Int ?? 0,
                                    (p["owner"] as? String ?? "(none)") as NSString, Int64(p["epoch"] as? Int ?? 0),
                                    Int64(p["stream_first_sequence"] as? Int ?? 0), Int64(p["stream_last_sequence"] as? Int ?? 0),
                                    (p["stream_leader"] as? String ?? "?") as NSString))
            }
            lines.append("")
            lines.append("node          member  lag per partition")
            for n in s["nodes"] as? [[String: Any]] ?? [] {
                let lag = (n["lag"] as? [Any] ?? []).map { ($0 as? Int).map(String.init) ?? "?" }.joined(separator: " ")
                lines.append(String(format: "%-12@  %-6@  %@", (n["node"] as? String ?? "?") as NSString,
                                    ((n["member"] as? Bool ?? false) ? "yes" : "no") as NSString, lag as NSString))
            }
            return lines.joined(separator: "\n")
        }
    }
}
