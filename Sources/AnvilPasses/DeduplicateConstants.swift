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
        // Only initializers with the same type and shape can be equal: group them first,
        // so large unique weights are never hashed.
        var groups: [String: [String]] = [:]
        for name in graph.initializerOrder where !outputs.contains(name) {
            guard let t = graph.initializers[name] else { continue }
            groups["\(t.dataType)\(t.shape)", default: []].append(name)
        }
        var changed = false
        for names in groups.values where names.count > 1 {
            var byContent: [Tensor: String] = [:]
            for name in names {
                let t = graph.initializers[name]!
                if let first = byContent[t] {
                    graph.replaceUses(of: name, with: first)
                    graph.removeInitializer(name)
                    context.count("initializers merged")
                    changed = true
                } else {
                    byContent[t] = name
                }
            }
        }
        return changed
    }
}
