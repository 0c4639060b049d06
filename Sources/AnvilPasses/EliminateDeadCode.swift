import AnvilCore
import AnvilIR

/// Removes nodes none of whose outputs are read, initializers nothing reads, and
/// unread optional outputs (Dropout's mask, MaxPool's indices, LayerNormalization's
/// statistics, the states of recurrent ops).
public struct EliminateDeadCode: Pass {
    public let name = "eliminate-dead-code"
    public let summary = "remove unread nodes, initializers and optional outputs"
    public init() {}

    /// Ops whose outputs after the first are optional and may be dropped.
    static let optionalTrailingOutputs: Set<String> = [
        "Dropout", "MaxPool", "LayerNormalization", "BatchNormalization", "LSTM", "GRU", "RNN", "Attention", "SoftmaxCrossEntropyLoss",
    ]

    public func run(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        var changed = false
        // Sweep backwards so a whole dead chain goes in one pass.
        var live = Set(graph.outputs.map(\.name))
        var kept: [Node] = []
        for node in graph.nodes.reversed() {
            let read = node.outputs.contains { !$0.isEmpty && live.contains($0) }
            guard read else {
                context.count("nodes removed")
                changed = true
                continue
            }
            if node.domain.isEmpty, Self.optionalTrailingOutputs.contains(node.opType) {
                for i in 1..<max(node.outputs.count, 1) where !node.outputs[i].isEmpty && !live.contains(node.outputs[i]) {
                    node.outputs[i] = ""
                    context.count("outputs removed")
                    changed = true
                }
                while node.outputs.count > 1, node.outputs.last == "" { node.outputs.removeLast() }
            }
            live.formUnion(node.inputs)
            for sub in node.subgraphs { live.formUnion(UseIndex.outerReferences(sub)) }
            kept.append(node)
        }
        graph.nodes = kept.reversed()
        for name in graph.initializerOrder where !live.contains(name) {
            graph.removeInitializer(name)
            context.count("initializers removed")
            changed = true
        }
        return changed
    }
}
