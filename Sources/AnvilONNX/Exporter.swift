import AnvilCore
import AnvilIR
import Foundation

/// Protobuf wire-format writer: just what ONNX messages need.
struct ProtoWriter {
    var bytes: [UInt8] = []

    mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func key(_ field: Int, _ wireType: UInt64) { varint(UInt64(field) << 3 | wireType) }
    mutating func int(_ field: Int, _ value: Int64) { key(field, 0); varint(UInt64(bitPattern: value)) }
    mutating func float(_ field: Int, _ value: Float) {
        key(field, 5)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }
    mutating func data(_ field: Int, _ payload: [UInt8]) { key(field, 2); varint(UInt64(payload.count)); bytes += payload }
    mutating func string(_ field: Int, _ s: String) { data(field, Array(s.utf8)) }
    mutating func message(_ field: Int, _ build: (inout ProtoWriter) throws -> Void) rethrows {
        var inner = ProtoWriter()
        try build(&inner)
        data(field, inner.bytes)
    }
    mutating func packedInt64s(_ field: Int, _ values: [Int64]) {
        var inner = ProtoWriter()
        for v in values { inner.varint(UInt64(bitPattern: v)) }
        data(field, inner.bytes)
    }
    mutating func packedFloats(_ field: Int, _ values: [Float]) {
        var inner = ProtoWriter()
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { inner.bytes.append(contentsOf: $0) } }
        data(field, inner.bytes)
    }
}

/// Writes IR back as an ONNX ModelProto. Field numbers follow proto/onnx.proto.
public enum ONNXExporter {
    /// Serializes a model.
    public static func encode(_ model: Model) throws -> [UInt8] {
        var w = ProtoWriter()
        var functions = FunctionExport(defaultOpset: model.opsetVersion(domain: "") ?? 1)
        var graphWriter = ProtoWriter()
        try graph(model.graph, into: &graphWriter, functions: &functions)
        // Model-local functions need IR version 8.
        w.int(1, Int64(max(model.irVersion, functions.functions.isEmpty ? 3 : 8)))
        for opset in model.opsets {
            w.message(8) { o in
                o.string(1, opset.domain)
                o.int(2, Int64(opset.version))
            }
        }
        w.string(2, model.producerName.isEmpty ? "anvil" : model.producerName)
        if !model.producerVersion.isEmpty { w.string(3, model.producerVersion) }
        if !model.domain.isEmpty { w.string(4, model.domain) }
        if model.modelVersion != 0 { w.int(5, Int64(model.modelVersion)) }
        if !model.docString.isEmpty { w.string(6, model.docString) }
        w.data(7, graphWriter.bytes)
        for (k, v) in model.metadata {
            w.message(14) { e in e.string(1, k); e.string(2, v) }
        }
        for f in functions.functions {
            try w.message(25) { fw in
                fw.string(1, f.name)
                for i in f.inputs { fw.string(4, i) }
                for o in f.outputs { fw.string(5, o) }
                for a in f.attributes { fw.string(6, a) }
                var unused = FunctionExport(defaultOpset: functions.defaultOpset)
                for n in f.nodes { try fw.message(7) { try node(n, into: &$0, functions: &unused) } }
                fw.string(8, FunctionExport.marker + f.anvilOp)
                fw.message(9) { o in o.string(1, ""); o.int(2, Int64(functions.defaultOpset)) }
                fw.string(10, anvilDomain)
            }
        }
        return w.bytes
    }

    /// Writes a model file atomically: a temporary file renamed into place, never
    /// over the input, nothing left behind on failure.
    public static func write(_ model: Model, to path: String, refusing input: String? = nil) throws {
        if let input { try OutputFiles.requireDistinct(outputs: [("the output", path)], inputs: [("the input model", input)]) }
        try OutputFiles.write([(path, try encode(model))])
    }

    static func graph(_ g: Graph, into w: inout ProtoWriter, functions: inout FunctionExport) throws {
        for node in g.nodes {
            // The element types of a node's constant inputs, which some bodies depend on (a float or int32 bias).
            let types = node.inputs.map { g.initializers[$0]?.dataType }
            try w.message(1) { try self.node(node, into: &$0, functions: &functions, constantTypes: types) }
        }
        w.string(2, g.name)
        for name in g.initializerOrder {
            guard let t = g.initializers[name] else { continue }
            try w.message(5) { try tensor(t, name: name, into: &$0) }
        }
        for input in g.inputs { w.message(11) { valueInfo(input, into: &$0) } }
        for output in g.outputs { w.message(12) { valueInfo(output, into: &$0) } }
        let declared = Set(g.inputs.map(\.name) + g.outputs.map(\.name) + g.initializerOrder)
        for name in g.valueTypes.keys.sorted() where !declared.contains(name) {
            w.message(13) { valueInfo(ValueInfo(name: name, type: g.valueTypes[name]!), into: &$0) }
        }
    }

    static func node(_ n: Node, into w: inout ProtoWriter, functions: inout FunctionExport, constantTypes: [DataType?] = []) throws {
        for input in n.inputs { w.string(1, input) }
        for output in n.outputs { w.string(2, output) }
        w.string(3, n.name)
        // Anvil's ops call a model-local function with a standard-op body.
        w.string(4, n.domain == anvilDomain ? try functions.function(for: n, constantTypes: constantTypes) : n.opType)
        if !n.domain.isEmpty { w.string(7, n.domain) }
        for key in n.attributes.keys.sorted() {
            try w.message(5) { try attribute(key, n.attributes[key]!, into: &$0, functions: &functions) }
        }
        if n.fusedFrom != [n.name] {
            // Provenance travels in the node's doc string, readable in Netron.
            w.string(6, "fused from: " + n.fusedFrom.joined(separator: " + "))
        }
    }

    static func attribute(_ name: String, _ a: Attribute, into w: inout ProtoWriter, functions: inout FunctionExport) throws {
        w.string(1, name)
        switch a {
        case .float(let v): w.int(20, 1); w.float(2, v)
        case .int(let v): w.int(20, 2); w.int(3, v)
        case .string(let v): w.int(20, 3); w.string(4, v)
        case .tensor(let t): w.int(20, 4); try w.message(5) { try tensor(t, name: "", into: &$0) }
        case .graph(let g): w.int(20, 5); try w.message(6) { try graph(irGraph(g), into: &$0, functions: &functions) }
        case .floats(let v): w.int(20, 6); w.packedFloats(7, v)
        case .ints(let v): w.int(20, 7); w.packedInt64s(8, v)
        case .strings(let v): w.int(20, 8); for s in v { w.string(9, s) }
        case .tensors(let v): w.int(20, 9); for t in v { try w.message(10) { try tensor(t, name: "", into: &$0) } }
        case .graphs(let v): w.int(20, 10); for g in v { try w.message(11) { try graph(irGraph(g), into: &$0, functions: &functions) } }
        }
    }

    /// The IR graph behind a subgraph attribute (the only kind the builder side holds).
    static func irGraph(_ g: any Subgraph) throws -> Graph {
        guard let graph = g as? Graph else { throw AnvilError.invalidGraph(graph: g.name, reason: "is not an IR graph") }
        return graph
    }

    static func tensor(_ t: Tensor, name: String, into w: inout ProtoWriter) throws {
        w.packedInt64s(1, t.shape.map { Int64($0) })
        w.int(2, Int64(t.dataType.rawValue))
        if !name.isEmpty { w.string(8, name) }
        if t.dataType == .string {
            for s in t.strings { w.string(6, s) }
        } else {
            w.data(9, try t.littleEndianBytes())
        }
    }

    static func valueInfo(_ v: ValueInfo, into w: inout ProtoWriter) {
        w.string(1, v.name)
        guard v.type.elementType != nil || v.type.dims != nil else { return }
        w.message(2) { type in
            type.message(1) { tensorType in
                if let e = v.type.elementType { tensorType.int(1, Int64(e.rawValue)) }
                if let dims = v.type.dims {
                    tensorType.message(2) { shape in
                        for d in dims {
                            shape.message(1) { dim in
                                switch d {
                                case .known(let n): dim.int(1, Int64(n))
                                case .symbol(let s): dim.string(2, s)
                                case .unknown: break
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
