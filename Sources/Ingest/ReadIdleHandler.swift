import NIOCore

/// Tells the pipeline when a connection has read nothing for `timeout`, with the event that
/// NIO's `IdleStateHandler` sends (`IdleStateEvent.read`, once per silent period).
///
/// Not NIO's handler because that one measures silence on the process clock
/// (`NIODeadline.now()`), which a test cannot move; this one reads only the event loop's
/// clock (`eventLoop.now`, `scheduleTask`), which a testing event loop moves on request, so
/// the idle timeout is tested without waiting for it.
final class ReadIdleHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny

    private let timeout: TimeAmount
    private var lastRead = NIODeadline.uptimeNanoseconds(0)
    private var check: Scheduled<Void>?

    init(timeout: TimeAmount) { self.timeout = timeout }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        check = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = context.eventLoop.now
        context.fireChannelRead(data)
    }

    private func start(_ context: ChannelHandlerContext) {
        guard check == nil else { return }
        lastRead = context.eventLoop.now
        schedule(context, at: lastRead + timeout)
    }

    private func schedule(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        check = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard context.channel.isActive else { return }
            let due = lastRead + timeout
            let now = context.eventLoop.now
            if now >= due {
                schedule(context, at: now + timeout)
                context.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
            } else {
                schedule(context, at: due)
            }
        }
    }
}
