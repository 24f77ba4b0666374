import Foundation
import Hummingbird
import Ingest
import LogStore
import Logging
import SensorLogCore

/// `POST /sensor/data`: one reading or an array; 201 once durable under the fsync policy.
struct SensorDataRoute: Sendable {
    let pipeline: IngestPipeline
    let limits: Limits
    let rateLimiter: RateLimiter?

    struct Stored: Encodable {
        var index: Int?
        var partition: Int
        var offset: Int64
    }

    struct Created: Encodable {
        var accepted: Int
        var readings: [Stored]
        var duplicates: [Int]
        var tooOld: [Int]
        var deleted: [Int]
        var tooManySensors: [Int]
        enum CodingKeys: String, CodingKey { case accepted, readings, duplicates, tooOld = "too_old", deleted, tooManySensors = "too_many_sensors" }
    }

    func handle(_ request: Request, context: SensorRequestContext) async throws -> Response {
        guard Self.isJSON(request.headers[.contentType] ?? "") else {
            throw reject(APIError(.unsupportedMediaType, code: "unsupported_media_type", "Content-Type must be application/json"), count: 1)
        }
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limits.maxBodyBytes {
            throw reject(bodyTooLarge(), count: 1)
        }
        var request = request
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: limits.maxBodyBytes)
        } catch {
            throw reject(bodyTooLarge(), count: 1)
        }

        let validator = pipeline.validator
        let readings: [Reading]
        let isArray: Bool
        // Readings refused with the body: all of it (an array is refused whole), once it parses.
        var refused = 1
        do {
            let parsed = try body.withUnsafeReadableBytes { bytes throws(ReadingJSON.SyntaxError) in try ReadingJSON.parse(bytes) }
            isArray = parsed.isArray
            refused = max(1, parsed.items.count)
            if isArray {
                guard !parsed.items.isEmpty else { throw APIError(.badRequest, code: "empty_array", "the array holds no readings") }
                guard parsed.items.count <= limits.maxReadingsPerRequest else {
                    throw APIError(.badRequest, code: "too_many_readings",
                                   "at most \(limits.maxReadingsPerRequest) readings per request, got \(parsed.items.count)")
                }
            }
            var out: [Reading] = []
            out.reserveCapacity(parsed.items.count)
            for (i, p) in parsed.items.enumerated() {
                do {
                    out.append(try p.reading(index: isArray ? i : nil, validator: validator))
                } catch {
                    throw APIError(.badRequest, code: error.code, error.message, field: error.field, index: error.index)
                }
            }
            readings = out
        } catch let error as APIError {
            throw reject(error, count: refused)
        } catch let error as ReadingJSON.SyntaxError {
            throw reject(APIError(.badRequest, code: "invalid_json", "body is not a JSON reading or array of readings: \(error.message) at byte \(error.position)"), count: 1)
        } catch {
            throw reject(APIError(.badRequest, code: "invalid_json", "body is not a JSON reading or array of readings"), count: 1)
        }

        do {
            try rateLimiter?.admit(readings.count, context)
        } catch {
            throw reject(error, count: readings.count)
        }

        let outcomes: [IngestOutcome]
        do {
            if readings.count == 1 {
                // One reading is type-checked by the append itself.
                outcomes = try await pipeline.submit(readings, via: .http)
            } else {
                switch try await pipeline.submitWhole(readings, via: .http) {
                case .submitted(let all):
                    outcomes = all
                case .typeConflict(let index, let expected):
                    throw reject(APIError(.badRequest, code: "type_mismatch", "sensor \(readings[index].sensorID) is a \(expected) sensor",
                                          field: "type", index: isArray ? index : nil), count: readings.count)
                }
            }
        } catch let error as APIError {
            throw error
        } catch let error as LogError {
            context.logger.error("append failed", metadata: ["error": "\(error)"])
            throw APIError.logRefused(error, retryAfterSeconds: limits.retryAfterSeconds, retry: "retries are deduplicated")
        }

        if !isArray {
            switch outcomes[0] {
            case .appended(let partition, let offset):
                // By hand: JSONEncoder costs more than the rest of the response.
                return JSONBody.response(.created, raw: "{\"offset\":\(offset),\"partition\":\(partition)}\n")
            case .duplicate:
                throw APIError(.conflict, code: "duplicate", "a reading of \(readings[0].sensorID) at this timestamp is already stored")
            case .typeMismatch(let expected):
                throw APIError(.badRequest, code: "type_mismatch", "sensor \(readings[0].sensorID) is a \(expected) sensor", field: "type")
            case .tooOld:
                throw APIError(.badRequest, code: "too_old", "older than the retained log: retention removed readings up to this time",
                               field: "timestamp")
            case .deleted:
                throw APIError(.conflict, code: "deleted",
                               "sensor \(readings[0].sensorID) was deleted: its readings up to the newest one deleted are refused", field: "timestamp")
            case .tooManySensors:
                throw APIError(.badRequest, code: "too_many_sensors",
                               "sensor \(readings[0].sensorID) is new and the server already holds the most sensors it takes (--max-sensors)",
                               field: "sensor_id")
            }
        }
        var created = Created(accepted: 0, readings: [], duplicates: [], tooOld: [], deleted: [], tooManySensors: [])
        for (i, outcome) in outcomes.enumerated() {
            switch outcome {
            case .appended(let partition, let offset):
                created.readings.append(Stored(index: i, partition: partition, offset: offset))
            case .duplicate, .typeMismatch:  // no mismatch here: submitWhole claimed the types
                created.duplicates.append(i)
            case .tooOld:
                created.tooOld.append(i)
            case .deleted:
                created.deleted.append(i)
            case .tooManySensors:
                created.tooManySensors.append(i)
            }
        }
        created.accepted = created.readings.count
        return JSONBody.response(.created, created)
    }

    /// Whether a Content-Type names JSON (`application/json` or a `+json` type, any parameters).
    static func isJSON(_ contentType: String) -> Bool {
        let mediaType = contentType.utf8.split(separator: UInt8(ascii: ";"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        let trimmed = mediaType.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
        let lowered = String(decoding: trimmed, as: UTF8.self).lowercased()
        return lowered == "application/json" || lowered.hasSuffix("+json")
    }

    private func bodyTooLarge() -> APIError {
        APIError(.contentTooLarge, code: "body_too_large", "request body over \(limits.maxBodyBytes) bytes")
    }

    /// Every reason a posted reading is refused for (`sensorlog_readings_rejected_total{transport="http"}`),
    /// created at 0 at start-up: the codes this route refuses with, the reading's validation codes,
    /// and the ingest path's (duplicates, type mismatches, too old, a log that refused the append).
    static let rejectionReasons: [String] = {
        let route: [String] = ["unsupported_media_type", "body_too_large", "invalid_json", "empty_array", "too_many_readings",
                               "rate_limited", "invalid_value"]
        let validation: [ReadingError.Code] = [.missingField, .invalidSensorID, .unknownType, .nonFiniteValue, .outOfRange,
                                               .invalidLocation, .invalidTimestamp]
        let log: [LogError.Code] = [.diskFull, .io]
        return route + validation.map(\.rawValue) + log.map(\.rawValue) + IngestMetrics.commonReasons
    }()

    /// Counts the refused readings by reason and passes the error on.
    private func reject(_ error: APIError, count: Int) -> APIError {
        pipeline.metrics.rejected(count, via: .http, reason: error.code)
        return error
    }
}
