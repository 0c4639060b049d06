import AnvilCore
import AnvilEngine
import AnvilKernels

/// A plan of the part of a graph the planner can take, for a graph it cannot take
/// whole: a detector whose post-processing holds If nodes or computes shapes from
/// the data (NonZero, NonMaxSuppression, TopK by a computed k), a model that feeds a
/// Loop. The planned part is every layer without subgraphs whose output shapes
/// follow from the input shapes alone and whose inputs come from graph inputs,
/// constants or other planned layers; it runs first, on the plan (the backbone on
/// oneDNN, in the arena), and the layer interpreter runs the rest with the planned
/// values the rest reads.
final class PartialPlan {
    let plan: ExecutionPlan
    /// Names of the planned layers (the interpreter skips them).
    let planned: Set<String>
    /// The planned values the interpreted layers (or the graph's outputs) read, in the plan's output order.
    let boundary: [String]
    /// Why each interpreted layer is not planned.
    let reasons: [String: String]

    private init(plan: ExecutionPlan, planned: Set<String>, boundary: [String], reasons: [String: String]) {
        self.plan = plan
        self.planned = planned
        self.boundary = boundary
        self.reasons = reasons
    }

    /// The layers of `graph` that can be planned for inputs whose shapes alone fix
    /// theirs, and why each other layer cannot.
    static func split(_ graph: EngineGraph, types: [String: (DataType, [Int])]) -> (planned: [Layer], reasons: [String: String]) {
        // Shapes that follow from the inputs': known sizes and symbols other than the fresh
        // ones shape inference names "node:N" for sizes only the data decides (NonZero's count).
        var inputSymbols = Set<String>()
        for (_, t) in graph.inputs { for case .symbol(let s) in t.dims ?? [] { inputSymbols.insert(s) } }
        func fresh(_ symbol: String) -> Bool { !inputSymbols.contains(symbol) && Dim.symbol(symbol).isMadeUp }
        func static_(_ name: String) -> Bool {
            guard types[name] != nil, let dims = graph.valueTypes[name]?.dims else { return false }
            return dims.allSatisfy { d in
                switch d {
                case .known: true
                case .symbol(let s): !fresh(s)
                case .unknown: false
                }
            }
        }
        var available = Set(graph.inputs.map(\.name))
        var planned: [Layer] = []
        var reasons: [String: String] = [:]
        for layer in graph.layers {
            let reads = layer.inputs.filter { !$0.isEmpty && graph.constants[$0] == nil }
            if !GraphInterpreter<EngineGraph>.subgraphs(of: layer).isEmpty {
                reasons[layer.name] = "layer has subgraphs"
            } else if let value = reads.first(where: { !available.contains($0) }) {
                reasons[layer.name] = "it reads '\(value)', computed on the interpreter"
            } else if let value = layer.outputs.first(where: { !$0.isEmpty && !static_($0) }) {
                reasons[layer.name] = "the shape of '\(value)' depends on the data"
            } else {
                planned.append(layer)
                available.formUnion(layer.outputs.filter { !$0.isEmpty })
            }
        }
        return (planned, reasons)
    }

    /// The partial plan for inputs of these shapes; nil when no layer worth planning
    /// qualifies or the planner fails (the whole graph then runs on the interpreter).
    static func make(_ engine: Engine, inputs: [String: Tensor], types: [String: (DataType, [Int])], finite: Bool) throws -> PartialPlan? {
        let graph = engine.graph
        let (layers, reasons) = split(graph, types: types)
        guard !layers.isEmpty, !reasons.isEmpty else { return nil }
        let planned = Set(layers.map(\.name))
        let producedHere = Set(layers.flatMap(\.outputs))
        // What the interpreted layers read (their subgraphs included), and the graph's outputs.
        var wanted = Set(graph.outputs.map(\.name))
        for layer in graph.layers where !planned.contains(layer.name) {
            wanted.formUnion(layer.inputs)
            for sub in GraphInterpreter<EngineGraph>.subgraphs(of: layer) { wanted.formUnion(GraphInterpreter<EngineGraph>.outerReferences(sub)) }
        }
        var boundary: [String] = []
        for layer in layers { for o in layer.outputs where !o.isEmpty && wanted.contains(o) && producedHere.contains(o) { boundary.append(o) } }
        guard !boundary.isEmpty else { return nil }
        let read = Set(layers.flatMap(\.inputs))
        let planInputs = graph.inputs.filter { read.contains($0.name) }.compactMap { i in inputs[i.name].map { (i.name, $0.dataType, $0.shape) } }
        var all = types
        for (name, t) in inputs { all[name] = (t.dataType, t.shape) }
        let plan = try ExecutionPlan(layers: layers, constants: engine.constants, inputs: planInputs, outputs: boundary, types: all,
                                     engine: engine.dnnl, shared: engine.kernels, finiteInputs: finite)
        return PartialPlan(plan: plan, planned: planned, boundary: boundary, reasons: reasons)
    }
}
