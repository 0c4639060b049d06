import AnvilCore
import AnvilIR
import CONNX
import Foundation

/// Limits that keep a hostile file from making Anvil allocate without bound.
public struct DecodeLimits: Sendable {
    /// Largest model file accepted (protobuf itself cannot exceed 2 GiB).
    public var maxFileBytes: Int = 2 << 30
    /// Largest single tensor, in elements.
    public var maxTensorElements: Int = 1 << 34
    /// Largest external-data file region, in bytes.
    public var maxExternalBytes: Int = 64 << 30
    /// Deepest nesting of subgraphs (If inside Loop inside ...).
    public var maxGraphDepth: Int = 64
    public init() {}
}

/// Reads ONNX files through protobuf-c and turns them into Anvil IR.
/// All C memory is copied into Swift values and freed before returning.
public enum ONNXImporter {
    /// Loads a model file; external data is resolved relative to its folder.
    public static func load(path: String, limits: DecodeLimits = DecodeLimits()) throws -> Model {
        let bytes = try readFile(path, limit: limits.maxFileBytes, what: "model")
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let model = try decodeModel(bytes, file: path, folder: folder, limits: limits)
        // The structural check is linear in the graph size, so it always runs on import.
        do {
            try Verifier.verify(model.graph)
        } catch AnvilError.invalidGraph(let graph, let reason) {
            throw AnvilError.invalidModel(file: path, field: "graph '\(graph)'", reason: reason)
        }
        return model
    }

    /// Decodes serialized ModelProto bytes. `folder` anchors external data (nil forbids it).
    public static func decodeModel(_ bytes: [UInt8], file: String, folder: String?, limits: DecodeLimits = DecodeLimits()) throws -> Model {
        guard !bytes.isEmpty else {
            throw AnvilError.invalidModel(file: file, field: "ModelProto", reason: "the file is empty")
        }
        try WireScan.refuseDeepNesting(bytes, root: onnx__model_proto__descriptor, file: file, message: "ModelProto")
        let proto = bytes.withUnsafeBufferPointer { buf in
            onnx__model_proto__unpack(nil, buf.count, buf.baseAddress)
        }
        guard let proto else {
            throw AnvilError.invalidModel(file: file, field: "ModelProto", reason: "not a valid ONNX protobuf (truncated or corrupt file, or not an ONNX model)")
        }
        defer { onnx__model_proto__free_unpacked(proto, nil) }
        let context = ImportContext(file: file, folder: folder, limits: limits)
        return try context.model(proto.pointee)
    }

    /// Decodes a serialized TensorProto (an ONNX test-data `.pb` file).
    public static func decodeTensor(_ bytes: [UInt8], file: String, limits: DecodeLimits = DecodeLimits()) throws -> (name: String, tensor: Tensor) {
        try WireScan.refuseDeepNesting(bytes, root: onnx__tensor_proto__descriptor, file: file, message: "TensorProto")
        let proto = bytes.withUnsafeBufferPointer { buf in
            onnx__tensor_proto__unpack(nil, buf.count, buf.baseAddress)
        }
        guard let proto else {
            throw AnvilError.invalidModel(file: file, field: "TensorProto", reason: "not a valid ONNX TensorProto (truncated or corrupt file)")
        }
        defer { onnx__tensor_proto__free_unpacked(proto, nil) }
        let folder = URL(fileURLWithPath: file).deletingLastPathComponent().path
        let context = ImportContext(file: file, folder: folder, limits: limits)
        let t = try context.tensor(proto.pointee, field: "TensorProto")
        return (string(proto.pointee.name), t)
    }

    /// Reads a whole file, refusing files larger than `limit` (or the memory limit).
    /// Devices are refused; pipes and other files are read in chunks up to the limit,
    /// since their size is not known in advance (stat says 0 for /dev/zero).
    public static func readFile(_ path: String, limit: Int, what: String) throws -> [UInt8] {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw AnvilError.io(path: path, reason: errno == ENOENT ? "no such file" : "cannot be read (\(String(cString: strerror(errno))))")
        }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: throw AnvilError.io(path: path, reason: "is a directory, expected a \(what) file")
        case S_IFCHR, S_IFBLK: throw AnvilError.io(path: path, reason: "is a device, expected a \(what) file")
        default: break
        }
        guard Int(info.st_size) <= limit else {
            throw AnvilError.io(path: path, reason: "\(what) file is \(info.st_size) bytes, more than the limit of \(limit)")
        }
        try MemoryPolicy.check(Int(info.st_size), for: "reading \(path)")
        let limit = min(limit, MemoryPolicy.limit)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw AnvilError.io(path: path, reason: "cannot be opened for reading")
        }
        defer { try? handle.close() }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(info.st_size))
        while true {
            let chunk: Data
            do { chunk = try handle.read(upToCount: 1 << 22) ?? Data() } catch {
                throw AnvilError.io(path: path, reason: "cannot be read (\(error.localizedDescription))")
            }
            if chunk.isEmpty { break }
            bytes.append(contentsOf: chunk)
            guard bytes.count <= limit else {
                throw AnvilError.io(path: path, reason: "\(what) file is more than the limit of \(limit) bytes")
            }
        }
        return bytes
    }
}

/// Converts C protobuf structures into IR values; holds the file name for errors.
struct ImportContext {
    let file: String
    let folder: String?
    let limits: DecodeLimits

    func fail(_ field: String, _ reason: String) -> AnvilError {
        .invalidModel(file: file, field: field, reason: reason)
    }

    func model(_ m: Onnx__ModelProto) throws -> Model {
        guard let g = m.graph else {
            throw fail("ModelProto.graph", "the model has no graph (is this an ONNX model?)")
        }
        var opsets: [OpsetImport] = []
        for (i, p) in array(m.opset_import, m.n_opset_import).enumerated() {
            let domain = string(p.pointee.domain)
            guard (p.pointee.has_version != 0), p.pointee.version > 0, p.pointee.version < 10_000 else {
                throw fail("ModelProto.opset_import[\(i)]", "domain '\(domain)' has no valid version")
            }
            opsets.append(OpsetImport(domain: domain == "ai.onnx" ? "" : domain, version: Int(p.pointee.version)))
        }
        if opsets.isEmpty {
            // IR version 1-2 models predate opset_import; they use opset 1.
            guard m.ir_version < 3 else { throw fail("ModelProto.opset_import", "no operator set is imported") }
            opsets = [OpsetImport(domain: "", version: 1)]
        }
        let metadata = array(m.metadata_props, m.n_metadata_props).map { (string($0.pointee.key), string($0.pointee.value)) }
        let functions = try array(m.functions, m.n_functions).map { try function($0.pointee) }
        var graph = try self.graph(g.pointee, path: "graph", depth: 0)
        if !functions.isEmpty {
            graph = try FunctionInliner(functions: functions, file: file).inline(graph)
        }
        return Model(graph: graph, opsets: opsets, irVersion: Int(m.ir_version), producerName: string(m.producer_name),
                     producerVersion: string(m.producer_version), domain: string(m.domain),
                     modelVersion: Int(m.model_version), docString: string(m.doc_string), metadata: metadata)
    }

    func graph(_ g: Onnx__GraphProto, path: String, depth: Int) throws -> Graph {
        guard depth <= limits.maxGraphDepth else {
            throw fail(path, "subgraphs are nested more than \(limits.maxGraphDepth) deep")
        }
        let name = string(g.name).isEmpty ? (depth == 0 ? "main" : path) : string(g.name)
        var initializers: [(String, Tensor)] = []
        for (i, t) in array(g.initializer, g.n_initializer).enumerated() {
            let tname = string(t.pointee.name)
            guard !tname.isEmpty else { throw fail("\(path).initializer[\(i)]", "initializer has no name") }
            initializers.append((tname, try tensor(t.pointee, field: "\(path).initializer '\(tname)'")))
        }
        for (i, s) in array(g.sparse_initializer, g.n_sparse_initializer).enumerated() {
            let t = try sparse(s.pointee, field: "\(path).sparse_initializer[\(i)]")
            initializers.append((t.0, t.1))
        }
        let inputs = try array(g.input, g.n_input).enumerated().map { try valueInfo($0.element.pointee, field: "\(path).input[\($0.offset)]") }
        let outputs = try array(g.output, g.n_output).enumerated().map { try valueInfo($0.element.pointee, field: "\(path).output[\($0.offset)]") }
        var valueTypes: [String: TensorType] = [:]
        for (i, v) in array(g.value_info, g.n_value_info).enumerated() {
            let info = try valueInfo(v.pointee, field: "\(path).value_info[\(i)]")
            valueTypes[info.name] = info.type
        }
        var nodes: [Node] = []
        var usedNames = Set<String>()
        for (i, n) in array(g.node, g.n_node).enumerated() {
            let node = try self.node(n.pointee, index: i, path: path, depth: depth)
            // ONNX allows empty and repeated node names; the IR wants unique ones.
            var unique = node.name.isEmpty ? "\(node.opType)_\(i)" : node.name
            if usedNames.contains(unique) {
                var k = 1
                while usedNames.contains("\(unique)_\(k)") { k += 1 }
                unique = "\(unique)_\(k)"
            }
            usedNames.insert(unique)
            node.name = unique
            node.fusedFrom = [unique]
            nodes.append(node)
        }
        return Graph(name: name, inputs: inputs, outputs: outputs, nodes: nodes, initializers: initializers, valueTypes: valueTypes)
    }

    func node(_ n: Onnx__NodeProto, index: Int, path: String, depth: Int) throws -> Node {
        let name = string(n.name)
        let op = string(n.op_type)
        let field = "\(path).node[\(index)]\(name.isEmpty ? "" : " '\(name)'")"
        guard !op.isEmpty else { throw fail(field, "node has no op_type") }
        var attributes: [String: Attribute] = [:]
        for a in array(n.attribute, n.n_attribute) {
            let aname = string(a.pointee.name)
            guard !aname.isEmpty else { throw fail("\(field).attribute", "attribute has no name") }
            attributes[aname] = try attribute(a.pointee, field: "\(field) (\(op)).attribute '\(aname)'", depth: depth)
        }
        let domain = string(n.domain)
        return Node(name: name, opType: op, domain: domain == "ai.onnx" ? "" : domain,
                    inputs: strings(n.input, n.n_input), outputs: strings(n.output, n.n_output), attributes: attributes)
    }

    func attribute(_ a: Onnx__AttributeProto, field: String, depth: Int) throws -> Attribute {
        var kind = (a.has_type != 0) ? a.type : ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED
        if kind == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED {
            // IR v1 files may omit the type; infer it from the field that is set.
            if (a.has_f != 0) { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT }
            else if (a.has_i != 0) { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT }
            else if (a.has_s != 0) { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING }
            else if a.t != nil { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR }
            else if a.g != nil { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH }
            else if a.n_floats > 0 { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS }
            else if a.n_ints > 0 { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS }
            else if a.n_strings > 0 { kind = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS }
            else { throw fail(field, "attribute has no type and no value") }
        }
        switch kind {
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: return .float(a.f)
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: return .int(a.i)
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING: return .string(binaryString(a.s))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR:
            guard let t = a.t else { throw fail(field, "tensor attribute has no tensor") }
            return .tensor(try tensor(t.pointee, field: field))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__SPARSE_TENSOR:
            guard let s = a.sparse_tensor else { throw fail(field, "sparse tensor attribute has no tensor") }
            return .tensor(try sparse(s.pointee, field: field).1)
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH:
            guard let g = a.g else { throw fail(field, "graph attribute has no graph") }
            return .graph(try graph(g.pointee, path: field, depth: depth + 1))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS:
            return .floats(Array(UnsafeBufferPointer(start: a.floats, count: a.n_floats)))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS:
            return .ints(Array(UnsafeBufferPointer(start: a.ints, count: a.n_ints)))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS:
            return .strings(UnsafeBufferPointer(start: a.strings, count: a.n_strings).map(binaryString))
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSORS:
            return .tensors(try array(a.tensors, a.n_tensors).enumerated().map { try tensor($0.element.pointee, field: "\(field)[\($0.offset)]") })
        case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPHS:
            return .graphs(try array(a.graphs, a.n_graphs).enumerated().map { try graph($0.element.pointee, path: "\(field)[\($0.offset)]", depth: depth + 1) })
        default:
            throw fail(field, "attribute kind \(kind.rawValue) (type protos, sparse tensor lists) is not supported")
        }
    }

    func valueInfo(_ v: Onnx__ValueInfoProto, field: String) throws -> ValueInfo {
        let name = string(v.name)
        guard !name.isEmpty else { throw fail(field, "value has no name") }
        guard let tp = v.type else { return ValueInfo(name: name, type: .unknown) }
        guard tp.pointee.value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, let tt = tp.pointee.tensor_type else {
            if tp.pointee.value_case == ONNX__TYPE_PROTO__VALUE__NOT_SET { return ValueInfo(name: name, type: .unknown) }
            throw fail("\(field) '\(name)'", "only tensor values are supported (sequence, map, optional and sparse values are not)")
        }
        var elementType: DataType?
        if (tt.pointee.has_elem_type != 0), tt.pointee.elem_type != 0 {
            guard let t = DataType(rawValue: tt.pointee.elem_type) else {
                throw fail("\(field) '\(name)'.elem_type", "element type \(DataType.onnxName(code: tt.pointee.elem_type)) is not supported")
            }
            elementType = t
        }
        var dims: [Dim]?
        if let shape = tt.pointee.shape {
            dims = try array(shape.pointee.dim, shape.pointee.n_dim).enumerated().map { axis, d -> Dim in
                switch d.pointee.value_case {
                case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE:
                    let v = d.pointee.dim_value
                    // A negative dim_value is how paddle2onnx (and older exporters) say "dynamic":
                    // each is its own dimension, never tied to another.
                    if v < 0 { return .symbol("unk__\(name)_\(axis)") }
                    guard v <= limits.maxTensorElements else {
                        throw fail("\(field) '\(name)'.shape", "dimension \(v) is absurdly large")
                    }
                    return .known(Int(v))
                case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM:
                    let s = string(d.pointee.dim_param)
                    // "?" is not a name (paddle2onnx writes it for every unknown size): each its own dimension.
                    if s == "?" { return .symbol("unk__\(name)_\(axis)") }
                    return s.isEmpty ? .unknown : .symbol(s)
                default:
                    return .unknown
                }
            }
        }
        return ValueInfo(name: name, type: TensorType(elementType, dims))
    }

    /// Converts a TensorProto, reading raw_data, the typed fields or external data.
    func tensor(_ t: Onnx__TensorProto, field: String) throws -> Tensor {
        let name = string(t.name)
        guard t.segment == nil else { throw fail(field, "segmented tensors are not supported") }
        let code = (t.has_data_type != 0) ? t.data_type : 0
        guard let type = DataType(rawValue: code) else {
            throw fail("\(field).data_type", "element type \(DataType.onnxName(code: code)) is not supported")
        }
        let dims = Array(UnsafeBufferPointer(start: t.dims, count: t.n_dims))
        for d in dims where d < 0 || d > limits.maxTensorElements {
            throw fail("\(field).dims", "dimension \(d) is negative or absurdly large")
        }
        let shape = dims.map { Int($0) }
        guard let count = ShapeMath.elementCount(shape), count <= limits.maxTensorElements else {
            throw fail("\(field).dims", "dims \(shape) describe more elements than the limit of \(limits.maxTensorElements)")
        }
        func mismatch(_ source: String, _ found: Int) -> AnvilError {
            fail(field, "dims \(shape) need \(count) \(type) elements but \(source) holds \(found)")
        }
        do {
            if (t.has_data_location != 0), t.data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL {
                let bytes = try externalData(t, count: count, type: type, field: field)
                return try bytes.withUnsafeBytes { try Tensor.fromLittleEndian(type, shape: shape, bytes: $0, name: name) }
            }
            if (t.has_raw_data != 0), type != .string {
                let raw = UnsafeRawBufferPointer(start: t.raw_data.data, count: t.raw_data.len)
                guard raw.count == count * type.byteSize else { throw mismatch("raw_data (\(raw.count) bytes)", raw.count / max(type.byteSize, 1)) }
                return try Tensor.fromLittleEndian(type, shape: shape, bytes: raw, name: name)
            }
            switch type {
            case .float:
                guard t.n_float_data == count else { throw mismatch("float_data", t.n_float_data) }
                return try Tensor(shape: shape, storage: .float(Array(UnsafeBufferPointer(start: t.float_data, count: count))))
            case .double:
                guard t.n_double_data == count else { throw mismatch("double_data", t.n_double_data) }
                return try Tensor(shape: shape, storage: .double(Array(UnsafeBufferPointer(start: t.double_data, count: count))))
            case .int64:
                guard t.n_int64_data == count else { throw mismatch("int64_data", t.n_int64_data) }
                return try Tensor(shape: shape, storage: .int64(Array(UnsafeBufferPointer(start: t.int64_data, count: count))))
            case .uint32, .uint64:
                guard t.n_uint64_data == count else { throw mismatch("uint64_data", t.n_uint64_data) }
                let v = Array(UnsafeBufferPointer(start: t.uint64_data, count: count))
                return try Tensor(shape: shape, storage: type == .uint64 ? .uint64(v) : .uint32(v.map { UInt32(truncatingIfNeeded: $0) }))
            case .string:
                guard t.n_string_data == count else { throw mismatch("string_data", t.n_string_data) }
                return try Tensor(shape: shape, storage: .string(UnsafeBufferPointer(start: t.string_data, count: count).map(binaryString)))
            case .float16, .bfloat16:
                guard t.n_int32_data == count else { throw mismatch("int32_data", t.n_int32_data) }
                let bits = UnsafeBufferPointer(start: t.int32_data, count: count).map { UInt16(truncatingIfNeeded: $0) }
                return try Tensor(shape: shape, storage: type == .float16 ? .float16(bits.map { Float16(bitPattern: $0) }) : .bfloat16(bits))
            default:
                guard t.n_int32_data == count else { throw mismatch("int32_data", t.n_int32_data) }
                let v = UnsafeBufferPointer(start: t.int32_data, count: count).map { Int64($0) }
                return try Tensor(type, shape: shape, int64s: v)
            }
        } catch AnvilError.invalidTensor(_, let reason) {
            throw fail(field, reason)
        }
    }

    /// Reads a tensor's external data, refusing paths that leave the model's folder.
    func externalData(_ t: Onnx__TensorProto, count: Int, type: DataType, field: String) throws -> [UInt8] {
        var location = "", offset = 0, length: Int?
        for e in array(t.external_data, t.n_external_data) {
            let value = string(e.pointee.value)
            switch string(e.pointee.key) {
            case "location": location = value
            case "offset":
                guard let v = Int(value), v >= 0 else { throw fail("\(field).external_data.offset", "'\(value)' is not a valid offset") }
                offset = v
            case "length":
                guard let v = Int(value), v >= 0 else { throw fail("\(field).external_data.length", "'\(value)' is not a valid length") }
                length = v
            default: break
            }
        }
        guard let folder else { throw fail("\(field).external_data", "external data is not allowed here") }
        guard !location.isEmpty else { throw fail("\(field).external_data", "no location is given") }
        guard !location.hasPrefix("/") else {
            throw fail("\(field).external_data.location", "'\(location)' is an absolute path; external data must lie in the model's folder")
        }
        let base = URL(fileURLWithPath: folder).standardizedFileURL.resolvingSymlinksInPath().path
        let resolved = URL(fileURLWithPath: folder).appendingPathComponent(location).standardizedFileURL.resolvingSymlinksInPath().path
        guard resolved.hasPrefix(base.hasSuffix("/") ? base : base + "/") else {
            throw fail("\(field).external_data.location", "'\(location)' points outside the model's folder \(folder)")
        }
        let expected = count * type.byteSize
        if let length, length != expected {
            throw fail("\(field).external_data.length", "length \(length) disagrees with dims, which need \(expected) bytes")
        }
        guard expected <= limits.maxExternalBytes else { throw fail(field, "external tensor of \(expected) bytes exceeds the limit") }
        guard let handle = FileHandle(forReadingAtPath: resolved) else {
            throw fail("\(field).external_data.location", "cannot open '\(location)' (resolved to \(resolved))")
        }
        defer { try? handle.close() }
        let size = (try? FileManager.default.attributesOfItem(atPath: resolved)[.size] as? Int) ?? 0
        guard offset <= size, expected <= size - offset else {
            throw fail("\(field).external_data", "'\(location)' has \(size) bytes, too few for \(expected) bytes at offset \(offset)")
        }
        try handle.seek(toOffset: UInt64(offset))
        let data = try handle.read(upToCount: expected) ?? Data()
        guard data.count == expected else { throw fail("\(field).external_data", "short read from '\(location)'") }
        return [UInt8](data)
    }

    /// Densifies a sparse tensor (values with linear or coordinate indices).
    func sparse(_ s: Onnx__SparseTensorProto, field: String) throws -> (String, Tensor) {
        guard let v = s.values, let ix = s.indices else { throw fail(field, "sparse tensor lacks values or indices") }
        let values = try tensor(v.pointee, field: "\(field).values")
        let indices = try tensor(ix.pointee, field: "\(field).indices").int64s
        let shape = Array(UnsafeBufferPointer(start: s.dims, count: s.n_dims)).map { Int($0) }
        guard let total = ShapeMath.elementCount(shape), total <= limits.maxTensorElements else { throw fail("\(field).dims", "invalid dims \(shape)") }
        let nnz = values.count
        let strides = ShapeMath.strides(shape)
        var linear: [Int] = []
        if indices.count == nnz {
            linear = indices.map { Int($0) }
        } else if indices.count == nnz * shape.count {
            for k in 0..<nnz {
                var l = 0
                for d in 0..<shape.count { l += Int(indices[k * shape.count + d]) * strides[d] }
                linear.append(l)
            }
        } else {
            throw fail("\(field).indices", "\(indices.count) indices do not fit \(nnz) values of rank \(shape.count)")
        }
        for l in linear where l < 0 || l >= total { throw fail("\(field).indices", "index \(l) is outside \(shape)") }
        var dense = try Tensor.zeros(values.dataType, shape: [total]).doubles
        let vals = values.doubles
        for (k, l) in linear.enumerated() { dense[l] = vals[k] }
        return (string(v.pointee.name), try Tensor(values.dataType, shape: shape, doubles: dense))
    }

    func function(_ f: Onnx__FunctionProto) throws -> LocalFunction {
        let name = string(f.name)
        let field = "ModelProto.functions '\(name)'"
        let nodes = try array(f.node, f.n_node).enumerated().map { try node($0.element.pointee, index: $0.offset, path: field, depth: 1) }
        var defaults: [String: Attribute] = [:]
        for a in array(f.attribute_proto, f.n_attribute_proto) {
            defaults[string(a.pointee.name)] = try attribute(a.pointee, field: field, depth: 1)
        }
        return LocalFunction(name: name, domain: string(f.domain), inputs: strings(f.input, f.n_input),
                             outputs: strings(f.output, f.n_output), nodes: nodes, attributeDefaults: defaults,
                             refAttributes: refAttributes(f), docString: string(f.doc_string))
    }

    /// For each node of the function, which of its attributes refer to function attributes.
    func refAttributes(_ f: Onnx__FunctionProto) -> [[String: String]] {
        array(f.node, f.n_node).map { n in
            var refs: [String: String] = [:]
            for a in array(n.pointee.attribute, n.pointee.n_attribute) {
                let r = string(a.pointee.ref_attr_name)
                if !r.isEmpty { refs[string(a.pointee.name)] = r }
            }
            return refs
        }
    }
}

func array<T>(_ p: UnsafeMutablePointer<UnsafeMutablePointer<T>?>?, _ n: Int) -> [UnsafeMutablePointer<T>] {
    guard let p else { return [] }
    return (0..<n).compactMap { p[$0] }
}

func strings(_ p: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, _ n: Int) -> [String] {
    guard let p else { return [] }
    return (0..<n).map { string(p[$0]) }
}

func string(_ p: UnsafeMutablePointer<CChar>?) -> String {
    guard let p else { return "" }
    return String(cString: p)
}

func binaryString(_ b: ProtobufCBinaryData) -> String {
    guard let d = b.data, b.len > 0 else { return "" }
    return String(decoding: UnsafeBufferPointer(start: d, count: b.len), as: UTF8.self)
}
