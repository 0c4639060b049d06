import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilPasses
import ArgumentParser
import Foundation

/// Node counts and parameter bytes of a graph, for the before/after table.
struct GraphSummary {
    var ops: [String: Int] = [:]
    var nodes = 0
    var parameterBytes = 0

    init(_ graph: Graph) {
        graph.forEachNodeRecursively { node, _ in
            ops[node.qualifiedOpType, default: 0] += 1
            nodes += 1
        }
        parameterBytes = graph.initializers.values.reduce(0) { $0 + $1.count * max($1.dataType.byteSize, 1) }
    }
}

struct Optimize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Optimize an ONNX model and write the result as ONNX.",
        discussion: "Passes: \(Pipelines.passNames.joined(separator: ", ")). See docs/passes.md.")

    @Argument(help: "The ONNX model to optimize.") var model: String
    @Option(name: .shortAndLong, help: "The optimized model to write (never the input).") var output: String
    @Option(help: "Comma-separated passes to run (default: all).") var passes: String?
    @Option(help: "Comma-separated passes to skip.") var skip: String?
    @Option(help: "Print the IR after this pass, or 'all' (repeatable).") var printIrAfter: [String] = []
    @Option(help: "Stop after the first run of this pass.") var stopAfter: String?
    @Flag(help: "Keep only standard ONNX ops: skip fusions into Anvil's ai.anvil ops.") var standardOnly = false
    @Option(help: "Fix input shapes before optimizing: name:AxBxC[,name:…] (trtexec's form). Without it dynamic axes stay dynamic.")
    var shapes: [String] = []

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            try requireONNXModel(model, command: "optimize")
            try OutputFiles.requireDistinct(outputs: [("-o", output)], inputs: [("the model", model)])
            let m = try ONNXImporter.load(path: model)
            let before = GraphSummary(m.graph)
            let fixed = try ShapeProfile.from(shapes: ShapeProfile.parse(shapes, flag: "--shapes"), min: [:], opt: [:], max: [:])
            try fixed.check(against: m.graph.runtimeInputs.map { ($0.name, $0.type) })
            for (i, input) in m.graph.inputs.enumerated() {
                if let shape = fixed.opt[input.name], let e = input.type.elementType { m.graph.inputs[i].type = TensorType(e, shape: shape) }
            }
            var options = PipelineOptions()
            func list(_ s: String?) -> Set<String>? { s.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) } }
            options.only = list(passes)
            options.skip = list(skip) ?? []
            options.printIRAfter = Set(printIrAfter)
            options.stopAfter = stopAfter
            options.standardOnly = standardOnly
            let start = Date()
            let context = try PipelineRunner(options: options).run(m)
            Anvil.warn(m.warnings)
            let seconds = Date().timeIntervalSince(start)
            try ONNXExporter.write(m, to: output, refusing: model)
            print(table(before: before, after: GraphSummary(m.graph), context: context, seconds: seconds), terminator: "")
        }
    }

    func table(before: GraphSummary, after: GraphSummary, context: PassContext, seconds: Double) -> String {
        var s = "Optimized \(model) -> \(output) in \(String(format: "%.2f", seconds)) s\n\n"
        s += "op".padding(toLength: 32, withPad: " ", startingAt: 0) + "      before       after\n"
        for op in Set(before.ops.keys).union(after.ops.keys).sorted() {
            let b = before.ops[op] ?? 0, a = after.ops[op] ?? 0
            s += op.padding(toLength: 32, withPad: " ", startingAt: 0) + String(b).leftPadded(12) + String(a).leftPadded(12) + "\n"
        }
        s += "nodes".padding(toLength: 32, withPad: " ", startingAt: 0) + String(before.nodes).leftPadded(12) + String(after.nodes).leftPadded(12) + "\n"
        s += "parameter bytes".padding(toLength: 32, withPad: " ", startingAt: 0) + String(before.parameterBytes).leftPadded(12) + String(after.parameterBytes).leftPadded(12) + "\n\n"
        s += "Passes:\n"
        for (pass, counts) in context.statistics.sorted(by: { $0.key < $1.key }) {
            s += "  \(pass): " + counts.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ") + "\n"
        }
        let slowest = context.seconds.sorted { $0.value > $1.value }.prefix(3).map { "\($0.key) \(String(format: "%.2f", $0.value)) s" }
        s += "Time: " + slowest.joined(separator: ", ") + "\n"
        return s
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
