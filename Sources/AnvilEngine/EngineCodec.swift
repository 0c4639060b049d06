import AnvilCore
import AnvilKernels

/// Binary encoding of an EngineGraph for the engine file's GRAPH section.
/// Little-endian, length-prefixed; the reader checks every length against the
/// bytes that remain and every shape against the element limit, so no byte
/// sequence can make it crash or allocate without bound.
enum EngineCodec {
    static let maxDepth = 64

    struct Writer {
        var bytes: [UInt8] = []
        /// Constants written as type and shape only: the WEIGHTS section holds their values prepacked.
        var packedOnly: Set<String> = []
        mutating func u8(_ v: UInt8) { bytes.append(v) }
        mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
        mutating func string(_ s: String) { let b = Array(s.utf8); int(b.count); bytes += b }
        mutating func strings(_ s: [String]) { int(s.count); for x in s { string(x) } }
        mutating func type(_ t: TensorType) {
            int(Int(t.elementType?.rawValue ?? 0))
            guard let dims = t.dims else { int(-1); return }
            int(dims.count)
            for d in dims {
                switch d {
                case .known(let v): u8(0); int(v)
                case .symbol(let s): u8(1); string(s)
                case .unknown: u8(2)
                }
            }
        }
        mutating func tensor(_ t: Tensor) throws {
            int(Int(t.dataType.rawValue))
            int(t.rank)
            for d in t.shape { int(d) }
            if t.dataType == .string { strings(t.strings) } else { let raw = try t.littleEndianBytes(); int(raw.count); bytes += raw }
        }
        mutating func attribute(_ a: Attribute) throws {
            switch a {
            case .float(let v): u8(1); u64(UInt64(v.bitPattern))
            case .int(let v): u8(2); u64(UInt64(bitPattern: v))
            case .string(let v): u8(3); string(v)
            case .tensor(let t): u8(4); try tensor(t)
            case .graph(let g): u8(5); try graph(g)
            case .floats(let v): u8(6); int(v.count); for x in v { u64(UInt64(x.bitPattern)) }
            case .ints(let v): u8(7); int(v.count); for x in v { u64(UInt64(bitPattern: x)) }
            case .strings(let v): u8(8); strings(v)
            case .tensors(let v): u8(9); int(v.count); for t in v { try tensor(t) }
            case .graphs(let v): u8(10); int(v.count); for g in v { try graph(g) }
            }
        }
        mutating func graph(_ s: any Subgraph) throws {
            guard let g = s as? EngineGraph else { throw AnvilError.invalidGraph(graph: s.name, reason: "engines hold engine graphs only") }
            string(g.name)
            int(g.inputs.count); for i in g.inputs { string(i.name); type(i.type) }
            int(g.outputs.count); for o in g.outputs { string(o.name); type(o.type) }
            int(g.constants.count)
            for name in g.constants.names {
                string(name)
                if packedOnly.contains(name), let (t, shape) = g.constants.type(of: name) {
                    u8(1); int(Int(t.rawValue)); int(shape.count); for d in shape { int(d) }
                } else {
                    guard let t = try g.constants.tensor(name) else { continue }
                    u8(0); try tensor(t)
                }
            }
            int(g.layers.count)
            for l in g.layers {
                string(l.name); string(l.opType); string(l.domain); int(l.opset)
                strings(l.inputs); strings(l.outputs); strings(l.fusedFrom); decision(l.decision)
                int(l.attributes.count)
                for key in l.attributes.keys.sorted() { string(key); try attribute(l.attributes[key]!) }
            }
            int(g.valueTypes.count)
            for key in g.valueTypes.keys.sorted() { string(key); type(g.valueTypes[key]!) }
        }
    }

    struct Reader {
        let bytes: UnsafeRawBufferPointer
        var position = 0
        let file: String
        var section = "GRAPH"
        /// The top-level graph's prepacked weights (WEIGHTS section).
        var packed: [PackedWeights] = []
        /// What keeps `bytes` alive: constants are read from it on first use.
        var owner: AnyObject?

        init(bytes: UnsafeRawBufferPointer, file: String, section: String = "GRAPH") {
            self.bytes = bytes
            self.file = file
            self.section = section
        }

        func fail(_ reason: String) -> AnvilError { .invalidModel(file: file, field: "engine \(section) section", reason: reason) }

        mutating func u8() throws -> UInt8 {
            guard position < bytes.count else { throw fail("ends early at byte \(position)") }
            defer { position += 1 }
            return bytes[position]
        }
        mutating func u64() throws -> UInt64 {
            guard bytes.count - position >= 8 else { throw fail("ends early at byte \(position)") }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * UInt64(i)) }
            position += 8
            return v
        }
        mutating func int() throws -> Int { Int(Int64(bitPattern: try u64())) }
        /// A count of items each at least `minimum` bytes long, checked against what remains.
        mutating func count(minimum: Int = 1) throws -> Int {
            let n = try int()
            guard n >= 0, n <= (bytes.count - position) / max(minimum, 1) else { throw fail("count \(n) at byte \(position) is impossible") }
            return n
        }
        mutating func raw(_ n: Int) throws -> UnsafeRawBufferPointer {
            guard n >= 0, n <= bytes.count - position else { throw fail("length \(n) at byte \(position) exceeds the section") }
            defer { position += n }
            return UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)])
        }
        mutating func string() throws -> String { String(decoding: try raw(try count()), as: UTF8.self) }
        mutating func strings() throws -> [String] { try (0..<count(minimum: 8)).map { _ in try string() } }
        mutating func dataType() throws -> DataType {
            let code = try int()
            guard let t = DataType(rawValue: Int32(clamping: code)) else { throw fail("unknown element type \(code)") }
            return t
        }
        mutating func type() throws -> TensorType {
            let code = try int()
            let element = code == 0 ? nil : DataType(rawValue: Int32(clamping: code))
            let rank = try int()
            guard rank >= -1, rank <= 64 else { throw fail("rank \(rank) is impossible") }
            guard rank >= 0 else { return TensorType(element, nil) }
            var dims: [Dim] = []
            for _ in 0..<rank {
                switch try u8() {
                case 0: dims.append(.known(try int()))
                case 1: dims.append(.symbol(try string()))
                case 2: dims.append(.unknown)
                default: throw fail("unknown dimension kind")
                }
            }
            // Shapes the planner sizes memory by: each must describe a possible tensor.
            let known = dims.compactMap { d -> Int? in if case .known(let v) = d { return v } else { return nil } }
            guard known.allSatisfy({ $0 >= 0 }), ShapeMath.elementCount(known.filter { $0 != 0 }) != nil else {
                throw fail("shape \(known) is impossible")
            }
            return TensorType(element, dims)
        }
        mutating func tensor() throws -> Tensor {
            switch try tensorEntry() {
            case .decoded(let t): return t
            case .raw(let type, let shape, let data): return try decode(type, shape, data)
            }
        }

        /// A constant as read: decoded (strings) or its raw bytes, decoded later.
        enum TensorEntry { case decoded(Tensor), raw(DataType, [Int], UnsafeRawBufferPointer) }

        func decode(_ type: DataType, _ shape: [Int], _ data: UnsafeRawBufferPointer) throws -> Tensor {
            do {
                return try Tensor.fromLittleEndian(type, shape: shape, bytes: data, name: "constant")
            } catch AnvilError.invalidTensor(_, let reason) {
                throw fail(reason)
            }
        }

        mutating func tensorEntry() throws -> TensorEntry {
            let type = try dataType()
            let rank = try int()
            guard rank >= 0, rank <= 64 else { throw fail("rank \(rank) is impossible") }
            let shape = try (0..<rank).map { _ in try int() }
            guard let n = ShapeMath.elementCount(shape) else { throw fail("shape \(shape) is invalid") }
            if type == .string {
                let values = try strings()
                guard values.count == n else { throw fail("string tensor \(shape) has \(values.count) values") }
                return .decoded(try Tensor(shape: shape, storage: .string(values)))
            }
            return .raw(type, shape, try raw(try count()))
        }

        /// A graph constant: a tensor, or type and shape only when the WEIGHTS section holds it prepacked.
        mutating func constant() throws -> (name: String, type: DataType, shape: [Int], source: ConstantStore.Source) {
            let name = try string()
            switch try u8() {
            case 0:
                switch try tensorEntry() {
                case .decoded(let t): return (name, t.dataType, t.shape, .tensor(t))
                case .raw(let type, let shape, let data):
                    // Read in place on first use when the bytes outlive the reader; else now.
                    return (name, type, shape, owner != nil ? .bytes(data) : .tensor(try decode(type, shape, data)))
                }
            case 1:
                let type = try dataType()
                let rank = try int()
                guard rank >= 0, rank <= 64 else { throw fail("rank \(rank) is impossible") }
                let shape = try (0..<rank).map { _ in try int() }
                guard ShapeMath.elementCount(shape) != nil else { throw fail("shape \(shape) is invalid") }
                return (name, type, shape, .packed)
            default: throw fail("unknown constant kind at byte \(position - 1)")
            }
        }
        mutating func attribute(depth: Int) throws -> Attribute {
            switch try u8() {
            case 1: return .float(Float(bitPattern: UInt32(truncatingIfNeeded: try u64())))
            case 2: return .int(Int64(bitPattern: try u64()))
            case 3: return .string(try string())
            case 4: return .tensor(try tensor())
            case 5: return .graph(try graph(depth: depth + 1))
            case 6: return .floats(try (0..<count(minimum: 8)).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: try u64())) })
            case 7: return .ints(try (0..<count(minimum: 8)).map { _ in Int64(bitPattern: try u64()) })
            case 8: return .strings(try strings())
            case 9: return .tensors(try (0..<count(minimum: 16)).map { _ in try tensor() })
            case 10: return .graphs(try (0..<count(minimum: 40)).map { _ in try graph(depth: depth + 1) })
            default: throw fail("unknown attribute kind at byte \(position - 1)")
            }
        }
        mutating func graph(depth: Int = 0) throws -> EngineGraph {
            guard depth <= EngineCodec.maxDepth else { throw fail("subgraphs nest deeper than \(EngineCodec.maxDepth)") }
            let name = try string()
            let inputs = try (0..<count(minimum: 16)).map { _ in (name: try string(), type: try type()) }
            let outputs = try (0..<count(minimum: 16)).map { _ in (name: try string(), type: try type()) }
            let entries = try (0..<count(minimum: 25)).map { _ in try constant() }
            let constants: ConstantStore
            do {
                constants = try ConstantStore(entries, packed: depth == 0 ? packed : [], owner: owner)
            } catch AnvilError.invalidTensor(let name, let reason) {
                throw fail("constant '\(name)' \(reason)")
            }
            var layers: [Layer] = []
            for _ in 0..<(try count(minimum: 64)) {
                let lname = try string(), op = try string(), domain = try string(), opset = try int()
                let ins = try strings(), outs = try strings(), fused = try strings(), decision = try decision(layer: lname)
                var attributes: [String: Attribute] = [:]
                for _ in 0..<(try count(minimum: 9)) { attributes[try string()] = try attribute(depth: depth) }
                layers.append(Layer(name: lname, opType: op, domain: domain, opset: opset, inputs: ins, outputs: outs,
                                    attributes: attributes, fusedFrom: fused, decision: decision))
            }
            var valueTypes: [String: TensorType] = [:]
            for _ in 0..<(try count(minimum: 24)) { valueTypes[try string()] = try type() }
            return EngineGraph(name: name, inputs: inputs, outputs: outputs, constants: constants, layers: layers, valueTypes: valueTypes)
        }
    }

    static func encode(_ graph: EngineGraph, packedOnly: Set<String> = []) throws -> [UInt8] {
        var w = Writer()
        w.packedOnly = packedOnly
        try w.graph(graph)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8], file: String) throws -> EngineGraph {
        try bytes.withUnsafeBytes { try decode($0, file: file) }
    }

    /// Decodes a GRAPH section; with an `owner` keeping `bytes` alive, constants are
    /// read from them on first use, and `packed` gives the top-level graph's prepacked weights.
    static func decode(_ bytes: UnsafeRawBufferPointer, file: String, packed: [PackedWeights] = [], owner: AnyObject? = nil) throws -> EngineGraph {
        var r = Reader(bytes: bytes, file: file)
        r.packed = packed
        r.owner = owner
        let g = try r.graph()
        guard r.position == bytes.count else { throw r.fail("\(bytes.count - r.position) bytes after the graph") }
        return g
    }
}
