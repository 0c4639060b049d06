import AnvilCore
import AnvilIR

/// Keeps one copy of initializers with equal type, shape and contents.
public struct DeduplicateConstants: Pass {
    public let name = "deduplicate-constants"
    public let summary = "share identical initializers"
    public init() {}

    public func run(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        let outputs = Set(graph.outputs.map(\.name))
        var byContent: [Tensor: String] = [:]
        var changed = false
        for name in graph.initializerOrder {
            guard let t = graph.initializers[name], !outputs.contains(name) else { continue }
            if let first = byContent[t] {
                graph.replaceUses(of: name, with: first)
                graph.removeInitializer(name)
                context.count("initializers merged")
                changed = true
            } else {
                byContent[t] = name
            }
        }
        return changed
    }
}
