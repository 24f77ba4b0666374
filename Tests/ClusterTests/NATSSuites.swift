import Testing

/// Every suite that starts a NATS cluster, one at a time: each starts three nats-servers, and
/// several at once beside the other targets' suites slowed this 2-core machine past their deadlines.
/// (`.serialized` holds for the nested suites too.)
@Suite(.serialized) enum NATSSuites {}
