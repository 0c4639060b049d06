import AnvilCore
import AnvilIR

/// Exports Anvil's own ops (domain ai.anvil) as model-local ONNX functions whose
/// bodies are the equivalent standard ops, so ONNX Runtime and other tools run the
/// optimized model. Each distinct node configuration gets its own function,
/// specialized to the node's attributes; its doc string records the Anvil op so
/// that Anvil's importer turns calls back into the fused op instead of inlining.
struct FunctionExport {
    /// Doc-string prefix marking a function as the body of an Anvil op.
    static let marker = "anvil.op="

    struct Function {
        var name: String
        var inputs: [String]
        var outputs: [String]
        var attributes: [String]
        var nodes: [Node]
        var anvilOp: String
    }

    let defaultOpset: Int
    private(set) var functions: [Function] = []
    private var bySignature: [String: String] = [:]

    init(defaultOpset: Int) { self.defaultOpset = defaultOpset }

    /// The function a fused node calls, created on first use.
    mutating func function(for node: Node, constantTypes: [DataType?] = []) throws -> String {
        // A FusedQLinearMatMul's bias: int32 in accumulator units, or float in real units.
        let floatBias = node.opType == "FusedQLinearMatMul" && constantTypes.count > 8 && constantTypes[8] == .float
        let signature = node.opType + "|" + node.inputs.map { $0.isEmpty ? "0" : "1" }.joined() + (floatBias ? "f" : "") + "|" + node.outputs.count.description + "|"
            + node.attributes.keys.sorted().map { "\($0)=\(node.attributes[$0]!)" }.joined(separator: ";")
        if let name = bySignature[signature] { return name }
        let name = "\(node.opType)_\(functions.count)"
        let formalInputs = node.inputs.enumerated().map { $0.element.isEmpty ? "" : "in\($0.offset)" }
        let formalOutputs = node.outputs.enumerated().map { "out\($0.offset)" }
        var body = Body(opset: defaultOpset, floatBias: floatBias)
        try body.build(node, inputs: formalInputs, outputs: formalOutputs)
        // Calls bind inputs by position: every position up to the last present one is declared,
        // an absent one (a FusedMatMul's missing bias before its residual) unused by the body.
        let declared = (0..<((node.inputs.lastIndex { !$0.isEmpty } ?? -1) + 1)).map { "in\($0)" }
        functions.append(Function(name: name, inputs: declared, outputs: formalOutputs,
                                  attributes: node.attributes.keys.sorted(), nodes: body.nodes, anvilOp: node.opType))
        bySignature[signature] = name
        return name
    }

    /// Standard-op bodies of Anvil's ops.
    struct Body {
        let opset: Int
        var floatBias = false
        var nodes: [Node] = []
        var counter = 0

        mutating func op(_ type: String, _ inputs: [String], _ attributes: [String: Attribute] = [:], output: String? = nil) -> String {
            counter += 1
            let out = output ?? "t\(counter)"
            nodes.append(Node(name: "n\(counter)", opType: type, inputs: inputs, outputs: [out], attributes: attributes))
            return out
        }

        mutating func constant(_ values: [Float], shape: [Int] = []) -> String {
            op("Constant", [], ["value": .tensor(try! Tensor(floats: values, shape: shape))])
        }

        mutating func constantInts(_ values: [Int64]) -> String {
            op("Constant", [], ["value": .tensor(try! Tensor(int64s: values, shape: [values.count]))])
        }

        mutating func build(_ node: Node, inputs i: [String], outputs o: [String]) throws {
            let a = node.attributes
            switch node.opType {
            case "FusedConv", "FusedGemm":
                let base = node.opType == "FusedConv" ? "Conv" : "Gemm"
                var attributes = a
                for k in ["activation", "activation_alpha", "activation_beta", "residual_after_activation"] { attributes[k] = nil }
                var y = op(base, Array(i.prefix(3)).reversedTrim(), attributes)
                if i.count > 3, !i[3].isEmpty, case .int(1)? = a["residual_after_activation"] {
                    counter += 1
                    let activated = "t\(counter)"
                    activation(y, node, output: activated)
                    _ = op("Add", [activated, i[3]], output: o[0])
                    return
                }
                if i.count > 3, !i[3].isEmpty { y = op("Add", [y, i[3]]) }
                activation(y, node, output: o[0])
            case "FusedMatMul":
                var y = op("MatMul", [i[0], i[1]])
                if i.count > 2, !i[2].isEmpty { y = op("Add", [y, i[2]]) }
                if i.count > 3, !i[3].isEmpty { y = op("Add", [y, i[3]]) }
                activation(y, node, output: o[0])
            case "FusedQLinearConv":
                // Dequantized inputs (the weights and the int32 bias per output channel), the float
                // Conv, the dequantized residual, the activation, quantized once.
                var attributes = a
                for k in ["activation", "activation_alpha", "activation_beta"] { attributes[k] = nil }
                var inputs = [op("DequantizeLinear", [i[0], i[1], i[2]]), op("DequantizeLinear", [i[3], i[4], i[5]], ["axis": .int(0)])]
                if i.count > 8, !i[8].isEmpty { inputs.append(op("DequantizeLinear", [i[8], op("Mul", [i[1], i[4]])], ["axis": .int(0)])) }
                var y = op("Conv", inputs, attributes)
                if i.count > 12, !i[12].isEmpty {
                    let inner = Array(i[12...]).reversedTrim()
                    y = op("DequantizeLinear", [op("QuantizeLinear", [y] + inner)] + inner)
                }
                if i.count > 9, !i[9].isEmpty {
                    let float = i.count < 11 || i[10].isEmpty
                    y = op("Add", [y, float ? i[9] : op("DequantizeLinear", Array(i[9..<min(i.count, 12)]).reversedTrim())])
                }
                quantizedEnd(y, node, i, o)
            case "FusedQLinearMatMul":
                let product = op("MatMul", [op("DequantizeLinear", [i[0], i[1], i[2]]), op("DequantizeLinear", [i[3], i[4], i[5]], ["axis": .int(1)])])
                let bias = i.count > 8 && !i[8].isEmpty ? (floatBias ? i[8] : op("DequantizeLinear", [i[8], op("Mul", [i[1], i[4]])], ["axis": .int(0)])) : nil
                var y = bias.map { op("Add", [product, $0]) } ?? product
                if i.count > 9, !i[9].isEmpty { y = op("Add", [y, i[9]]) }
                quantizedEnd(y, node, i, o)
            case "QuantizedLookup":
                // Gather(table, x as an index): an int8 x is negative where the table's byte order puts it last.
                _ = op("Gather", [i[1], op("Cast", [i[0]], ["to": .int(Int64(DataType.int32.rawValue))])], ["axis": .int(0)], output: o[0])
            case "SiLU":
                swish(i[0], alpha: a["alpha"].flatMap { if case .float(let v) = $0 { v } else { nil } } ?? 1, output: o[0])
            case "HardSwish":
                hardSwish(i[0], output: o[0])
            case "Gelu":
                gelu(i[0], tanh: a["approximate"].map { "\($0)" == "\"tanh\"" } ?? false, output: o[0])
            case "LayerNormalization", "RMSNormalization":
                try normalization(node, i, o)
            case "Attention":
                try attention(node, i, o)
            default:
                throw AnvilError.invalidNode(node: node.name, op: node.qualifiedOpType, reason: "has no standard-op body for export")
            }
        }

        /// The activation, then QuantizeLinear with y_scale and y_zero_point (inputs 6, 7), or
        /// (without y_scale) the activation's floats as the output.
        mutating func quantizedEnd(_ y: String, _ node: Node, _ i: [String], _ o: [String]) {
            guard i.count > 6, !i[6].isEmpty else { activation(y, node, output: o[0]); return }
            counter += 1
            let activated = "t\(counter)"
            activation(y, node, output: activated)
            _ = op("QuantizeLinear", [activated] + Array(i[6..<min(i.count, 8)]).reversedTrim(), output: o[0])
        }

        mutating func activation(_ x: String, _ node: Node, output: String) {
            guard case .string(let name)? = node.attributes["activation"] else { _ = op("Identity", [x], output: output); return }
            func float(_ key: String) -> Float? { if case .float(let v)? = node.attributes[key] { return v }; return nil }
            let alpha = float("activation_alpha"), beta = float("activation_beta")
            switch name {
            case "Relu", "Sigmoid", "Tanh": _ = op(name, [x], output: output)
            case "LeakyRelu": _ = op("LeakyRelu", [x], ["alpha": .float(alpha ?? 0.01)], output: output)
            case "Elu": _ = op("Elu", [x], ["alpha": .float(alpha ?? 1)], output: output)
            case "HardSigmoid": _ = op("HardSigmoid", [x], ["alpha": .float(alpha ?? 0.2), "beta": .float(beta ?? 0.5)], output: output)
            case "Clip":
                if opset < 11 { _ = op("Clip", [x], ["min": .float(alpha ?? -.greatestFiniteMagnitude), "max": .float(beta ?? .greatestFiniteMagnitude)], output: output) }
                else { _ = op("Clip", [x, constant([alpha ?? -.greatestFiniteMagnitude]), constant([beta ?? .greatestFiniteMagnitude])], output: output) }
            case "HardSwish": hardSwish(x, output: output)
            case "Mish":
                _ = op("Mul", [x, op("Tanh", [op("Softplus", [x])])], output: output)
            case "SiLU": _ = op("Mul", [x, op("Sigmoid", [x])], output: output)
            case "Swish": swish(x, alpha: alpha ?? 1, output: output)
            case "Gelu", "GeluTanh": gelu(x, tanh: name == "GeluTanh", output: output)
            default: _ = op("Identity", [x], output: output)
            }
        }

        /// x · sigmoid(α · x) (Swish only from opset 24).
        mutating func swish(_ x: String, alpha: Float, output: String) {
            _ = op("Mul", [x, op("Sigmoid", [alpha == 1 ? x : op("Mul", [x, constant([alpha])])])], output: output)
        }

        /// HardSwish, before opset 14 as x · HardSigmoid(x; α = 1/6, β = 1/2).
        mutating func hardSwish(_ x: String, output: String) {
            if opset >= 14 { _ = op("HardSwish", [x], output: output) }
            else { _ = op("Mul", [x, op("HardSigmoid", [x], ["alpha": .float(1.0 / 6), "beta": .float(0.5)])], output: output) }
        }

        mutating func gelu(_ x: String, tanh: Bool, output: String) {
            if opset >= 20 {
                _ = op("Gelu", [x], tanh ? ["approximate": .string("tanh")] : [:], output: output)
                return
            }
            let inner: String
            if tanh {
                let cube = op("Mul", [x, op("Mul", [x, x])])
                let sum = op("Add", [x, op("Mul", [cube, constant([0.044715])])])
                inner = op("Tanh", [op("Mul", [sum, constant([Float((2 / Double.pi).squareRoot())])])])
            } else {
                inner = op("Erf", [op("Div", [x, constant([Float(2.0.squareRoot())])])])
            }
            _ = op("Mul", [op("Mul", [x, constant([0.5])]), op("Add", [inner, constant([1])])], output: output)
        }

        mutating func reduceMean(_ x: String, axes: [Int64]) -> String {
            opset < 18 ? op("ReduceMean", [x], ["axes": .ints(axes), "keepdims": .int(1)])
                : op("ReduceMean", [x, constantInts(axes)], ["keepdims": .int(1)])
        }

        mutating func normalization(_ node: Node, _ i: [String], _ o: [String]) throws {
            // Anvil writes these axes counted from the end, so the body needs no rank.
            let axisAttribute = node.attributes["axis"] ?? .int(-1)
            guard case .int(let axis) = axisAttribute, axis < 0 else {
                throw AnvilError.invalidNode(node: node.name, op: node.qualifiedOpType, reason: "export needs an axis counted from the end")
            }
            let epsilon: Float = { if case .float(let v)? = node.attributes["epsilon"] { return v }; return 1e-5 }()
            let axes = Array(axis..<0)
            var centered = i[0]
            if node.opType == "LayerNormalization" { centered = op("Sub", [i[0], reduceMean(i[0], axes: axes)]) }
            let variance = reduceMean(op("Mul", [centered, centered]), axes: axes)
            let normalized = op("Div", [centered, op("Sqrt", [op("Add", [variance, constant([epsilon])])])])
            let scaled = op("Mul", [normalized, i[1]])
            if node.opType == "LayerNormalization", i.count > 2, !i[2].isEmpty { _ = op("Add", [scaled, i[2]], output: o[0]) }
            else { _ = op("Identity", [scaled], output: o[0]) }
        }

        mutating func attention(_ node: Node, _ i: [String], _ o: [String]) throws {
            guard i.count >= 3, i.count <= 4, o.count == 1 else {
                throw AnvilError.invalidNode(node: node.name, op: node.qualifiedOpType, reason: "export supports Q, K, V and an optional mask, one output")
            }
            func int(_ k: String) -> Int64? { if case .int(let v)? = node.attributes[k] { return v }; return nil }
            let scale: Float? = { if case .float(let v)? = node.attributes["scale"] { return v }; return nil }()
            var q = i[0], k = i[1], v = i[2]
            let threeD = int("q_num_heads") != nil
            if threeD {
                let heads = int("q_num_heads")!, kvHeads = int("kv_num_heads") ?? heads
                guard heads == kvHeads else { throw AnvilError.invalidNode(node: node.name, op: node.qualifiedOpType, reason: "export needs equal Q and KV heads") }
                func split(_ x: String) -> String {
                    op("Transpose", [op("Reshape", [x, constantInts([0, 0, heads, -1])])], ["perm": .ints([0, 2, 1, 3])])
                }
                q = split(q); k = split(k); v = split(v)
            }
            var scores = op("MatMul", [q, op("Transpose", [k], ["perm": .ints([0, 1, 3, 2])])])
            if let scale { scores = op("Mul", [scores, constant([scale])]) }
            else { throw AnvilError.invalidNode(node: node.name, op: node.qualifiedOpType, reason: "export needs an explicit scale") }
            if i.count > 3, !i[3].isEmpty { scores = op("Add", [scores, i[3]]) }
            let probabilities = op("Softmax", [scores], ["axis": .int(-1)])
            // Fully masked rows give NaN in Softmax; Attention defines them as zero.
            let guarded = op("Where", [op("IsNaN", [probabilities]), constant([0]), probabilities])
            let y = op("MatMul", [guarded, v])
            if threeD {
                _ = op("Reshape", [op("Transpose", [y], ["perm": .ints([0, 2, 1, 3])]), constantInts([0, 0, -1])], output: o[0])
            } else {
                _ = op("Identity", [y], output: o[0])
            }
        }
    }
}

private extension Array where Element == String {
    /// Drops trailing empty (omitted) inputs.
    func reversedTrim() -> [String] {
        var copy = self
        while copy.last == "" { copy.removeLast() }
        return copy
    }
}
