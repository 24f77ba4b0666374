import Aggregator
import HTTPAPI
public import Ingest
import LogStore
public import Metrics
import MQTT
public import Prometheus
import Synchronization

/// swift-metrics into the Prometheus registry, with `# HELP` text on every metric.
///
/// `PrometheusMetricsFactory` registers every metric with empty help, and the registry keeps the
/// first help text of a name (a later different one is a fatal error), so the text must go in at
/// creation: this factory looks it up by name in the descriptions the code that creates each metric
/// publishes (`IngestMetrics.descriptions`, `HTTPServer.metricDescriptions`, `DaemonMetrics`,
/// `MQTTIngestService.metricDescriptions`).
public struct DescribedMetricsFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    /// For its bucket defaults and its `destroy…` methods, which unregister from the same registry.
    private let prometheus: PrometheusMetricsFactory
    private let help: [String: String]

    /// Every metric sensorlogd creates.
    public static let descriptions = IngestMetrics.descriptions + HTTPServer.metricDescriptions + ServerTLS.descriptions + DaemonMetrics.descriptions
        + MQTTIngestService.metricDescriptions

    public init(registry: PrometheusCollectorRegistry, descriptions: [MetricDescription] = Self.descriptions) {
        self.registry = registry
        self.prometheus = PrometheusMetricsFactory(registry: registry)
        self.help = Dictionary(descriptions.map { ($0.name, $0.help) }, uniquingKeysWith: { first, _ in first })
    }

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        // A metric nobody described (a library's) still gets HELP, which says so; the e2e test
        // and tools/check-docs refuse such text for sensorlog's own.
        MetricNameDescriptor(metricName: label, unitName: "", helpText: help[label] ?? "\(label) (not described by sensorlog)")
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: descriptor(label), labels: dimensions) }
        let buckets = prometheus.valueHistogramBuckets[label] ?? prometheus.defaultValueHistogramBuckets
        return registry.makeValueHistogram(descriptor: descriptor(label), labels: dimensions, buckets: buckets)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        let buckets = prometheus.durationHistogramBuckets[label] ?? prometheus.defaultDurationHistogramBuckets
        return registry.makeDurationHistogram(descriptor: descriptor(label), labels: dimensions, buckets: buckets)
    }

    public func destroyCounter(_ handler: any CounterHandler) { prometheus.destroyCounter(handler) }
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { prometheus.destroyFloatingPointCounter(handler) }
    public func destroyRecorder(_ handler: any RecorderHandler) { prometheus.destroyRecorder(handler) }
    public func destroyMeter(_ handler: any MeterHandler) { prometheus.destroyMeter(handler) }
    public func destroyTimer(_ handler: any TimerHandler) { prometheus.destroyTimer(handler) }
}

/// The metrics the executable creates itself.
enum DaemonMetrics {
    static let descriptions = [
        MetricDescription("sensorlog_fsync_duration_seconds",
                          help: "fdatasync durations in seconds: the commit journal's under --fsync always, each partition's under interval."),
        MetricDescription("sensorlog_log_end_offset", help: "Next offset to be written, by partition."),
        MetricDescription("sensorlog_log_bytes", help: "Bytes of segment files, by partition."),
        MetricDescription("sensorlog_log_segments", help: "Segment files (closed and the active one), by partition."),
        MetricDescription("sensorlog_consumer_lag",
                          help: "Readings a consumer group has yet to read (end offset minus committed offset), by group and partition."),
        MetricDescription("sensorlog_retention_blocked",
                          help: "1 while retention is held back (the aggregator has not folded a segment it would delete, or a failed compaction swap awaits a restart), by partition."),
        MetricDescription("sensorlog_retention_segments_removed_total", help: "Segments deleted by the retention policy."),
        MetricDescription("sensorlog_retention_bytes_removed_total", help: "Bytes deleted by the retention policy, indexes included."),
        MetricDescription("sensorlog_maintenance_jobs_total", help: "Maintenance jobs run inside the server, by job and outcome."),
        MetricDescription("sensorlog_maintenance_job_duration_seconds", help: "Duration of maintenance jobs inside the server, by job."),
        MetricDescription("sensorlog_compaction_segments_rewritten_total", help: "Closed segments background compaction rewrote."),
        MetricDescription("sensorlog_sensor_index_files_written_total", help: "Sensor index files written for closed segments that lacked one."),
        MetricDescription("sensorlog_compaction_bytes_read_total", help: "Bytes of the segments background compaction rewrote."),
        MetricDescription("sensorlog_compaction_bytes_written_total", help: "Bytes of the segments background compaction wrote in their place."),
        MetricDescription("sensorlog_consumer_group_skipped_total",
                          help: "Readings retention deleted before a consumer group read them (the group resumed at the log's start), by group."),
    ]
}

/// `sensorlog_log_end_offset{partition}`, `sensorlog_log_bytes{partition}`, `sensorlog_log_segments{partition}` and
/// `sensorlog_consumer_lag{group,partition}`, set at scrape time. Every series of the log and of
/// the aggregator exists from start-up.
final class LogGauges: Sendable {
    let log: Log
    let aggregator: AggregatorService
    let endOffsets: [Metrics.Gauge]
    let bytes: [Metrics.Gauge]
    let segments: [Metrics.Gauge]
    let lags = Mutex<[String: Metrics.Gauge]>([:])
    let skipCounters = Mutex<Set<String>>([])

    init(log: Log, aggregator: AggregatorService) {
        self.log = log
        self.aggregator = aggregator
        endOffsets = log.partitions.map { Metrics.Gauge(label: "sensorlog_log_end_offset", dimensions: [("partition", String($0.id))]) }
        bytes = log.partitions.map { Metrics.Gauge(label: "sensorlog_log_bytes", dimensions: [("partition", String($0.id))]) }
        segments = log.partitions.map { Metrics.Gauge(label: "sensorlog_log_segments", dimensions: [("partition", String($0.id))]) }
        refresh()
    }

    func refresh() {
        for (i, p) in log.partitions.enumerated() {
            endOffsets[i].record(Double(p.endOffset))
            bytes[i].record(Double(p.bytes))
            segments[i].record(Double(p.segmentCount))
        }
        for group in GroupLag.all(log: log, aggregator: aggregator) {
            // The group's skip counter exists from its first scrape at 0, so that an alert's
            // increase() sees the first skip (a series born at 1 looks like no change).
            if group.group != AggregateStore.group, skipCounters.withLock({ $0.insert(group.group).inserted }) {
                Counter(label: "sensorlog_consumer_group_skipped_total", dimensions: [("group", group.group)]).increment(by: 0)
            }
            for p in group.partitions {
                let key = group.group + "/" + String(p.partition)
                let gauge = lags.withLock { g in
                    if let gauge = g[key] { return gauge }
                    let gauge = Metrics.Gauge(label: "sensorlog_consumer_lag", dimensions: [("group", group.group), ("partition", String(p.partition))])
                    g[key] = gauge
                    return gauge
                }
                gauge.record(Double(p.lag))
            }
        }
    }
}
