import AnvilCore

/// Checks the structural invariants of a graph: topological order, a single
/// definition of every value, no dangling references, and type consistency of
/// initializers with their declarations. Subgraphs are checked with the names
/// visible from their enclosing scopes.
public enum Verifier {
    /// Whether `verify` runs after import and every transformation. On in debug
    /// builds; tests and `ANVIL_VERIFY=1` turn it on in release builds.
    public static let enabledByDefault: Bool = {
        #if DEBUG
        return true
        #else
        return ProcessInfoShim.environment("ANVIL_VERIFY") == "1"
        #endif
    }()

    /// Throws `AnvilError.invalidGraph` describing the first violation found.
    public static func verify(_ graph: Graph, outerScope: Set<String> = []) throws {
        var defined = outerScope
        var definedHere = Set<String>()
        func define(_ name: String, by what: String) throws {
            guard !name.isEmpty else { return }
            if definedHere.contains(name) {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "value '\(name)' is defined more than once (again by \(what))")
            }
            definedHere.insert(name)
            defined.insert(name)
        }
        for input in graph.inputs { try define(input.name, by: "graph input") }
        for name in graph.initializerOrder where !definedHere.contains(name) {
            try define(name, by: "initializer")
        }
        if graph.initializerOrder.count != graph.initializers.count {
            throw AnvilError.invalidGraph(graph: graph.name, reason: "initializer order lists \(graph.initializerOrder.count) names for \(graph.initializers.count) initializers")
        }
        for input in graph.inputs {
            if let t = graph.initializers[input.name], !compatible(t.type, input.type) {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "initializer '\(input.name)' is \(t.type) but the graph input declares \(input.type)")
            }
        }
        var nodeNames = Set<String>()
        for node in graph.nodes {
            if !node.name.isEmpty, !nodeNames.insert(node.name).inserted {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "node name '\(node.name)' is used twice")
            }
            for (i, input) in node.inputs.enumerated() where !input.isEmpty && !defined.contains(input) {
                throw AnvilError.invalidGraph(graph: graph.name, reason: "node '\(node.name)' (\(node.opType)) input \(i) '\(input)' is not defined before it (missing input or initializer, or nodes out of topological order)")
            }
            for sub in node.subgraphs {
                do {
                    try verify(sub, outerScope: defined)
                } catch let AnvilError.invalidGraph(g, reason) {
                    throw AnvilError.invalidGraph(graph: "\(graph.name)/\(node.name)/\(g)", reason: reason)
                }
            }
            for output in node.outputs { try define(output, by: "node '\(node.name)'") }
        }
        for output in graph.outputs where !defined.contains(output.name) {
            throw AnvilError.invalidGraph(graph: graph.name, reason: "graph output '\(output.name)' is not produced by any node, input or initializer")
        }
    }

    /// Types agree where both are known.
    static func compatible(_ a: TensorType, _ b: TensorType) -> Bool {
        if let x = a.elementType, let y = b.elementType, x != y { return false }
        guard let da = a.dims, let db = b.dims else { return true }
        guard da.count == db.count else { return false }
        for (x, y) in zip(da, db) {
            if let u = x.value, let v = y.value, u != v { return false }
        }
        return true
    }
}

/// Reads the process environment without pulling Foundation into AnvilIR.
enum ProcessInfoShim {
    static func environment(_ key: String) -> String? {
        guard let p = getenv(key) else { return nil }
        return String(cString: p)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
