import AnvilCore
import AnvilONNX
import AnvilOps
import AnvilRuntime

/// The first layer of an engine whose output differs from the reference executor's value
/// of the same name beyond tolerance (`validate --mark-all`), as Polygraphy finds the first
/// mismatching layer with every tensor marked as an output.
struct LayerDivergence: Encodable {
    /// The engine layer and the value it wrote.
    var layer: String
    var value: String
    /// The ONNX nodes fused into the layer.
    var fusedFrom: [String]
    var comparison: OutputComparison
    /// Layer outputs compared before and including this one (values the optimizer made
    /// that the model does not have are skipped).
    var compared: Int

    /// Runs the engine with every layer output marked and the ONNX model at `model` on the
    /// reference executor, and compares them in layer order. Prints what it finds through
    /// `say`; nil when no layer diverges.
    static func find(engine: Engine, model: String, inputs: [String: Tensor], atol: Double, rtol: Double, statistic: ErrorStatistic,
                     say: (String) -> Void) throws -> LayerDivergence? {
        var reference: [String: Tensor] = [:]
        var executor = ReferenceExecutor(model: try ONNXImporter.load(path: model))
        executor.observe = { name, value in reference[name] = value }
        _ = try executor.run(inputs)
        let values = try engine.layerOutputs(inputs)
        var compared = 0, skipped = 0
        for layer in engine.graph.layers {
            for name in layer.outputs where !name.isEmpty {
                guard let actual = values[name], let expected = reference[name] else { skipped += 1; continue }
                compared += 1
                let c = OutputComparison.compare(name: name, actual: actual, expected: expected, atol: atol, rtol: rtol, statistic: statistic)
                guard !c.passed else { continue }
                say("  first diverging layer (of \(compared) layer outputs compared): '\(layer.name)' (\(layer.opType)) writing '\(name)': "
                    + (c.structuralError ?? "max abs error \(Validate.fmt(c.maxAbsoluteError)), max rel error \(Validate.fmt(c.maxRelativeError)), "
                       + "\(c.mismatches)/\(c.count) outside tolerance"))
                if layer.fusedFrom.count > 1 { say("    fused from: \(layer.fusedFrom.joined(separator: " + "))") }
                return LayerDivergence(layer: layer.name, value: name, fusedFrom: layer.fusedFrom, comparison: c, compared: compared)
            }
        }
        say("  every layer output agrees (\(compared) compared, \(skipped) without a value of that name in the model)")
        return nil
    }
}
