// libFuzzer target for the answer parser, the timestamp parser and the renderers
// (issue 10). Not part of the package: scripts/fuzz compiles it with
//   swiftc -sanitize=fuzzer,address -parse-as-library -module-name CredentialCore \
//     Tests/fuzz/parser_fuzzer.swift Sources/CredentialCore/{Credentials,AnswerParser,Renderers,RefreshMachine}.swift \
//     CredentialView.swift   (the CredentialView enum, cut out of CredentialViewSource.swift)
// and runs it on Tests/fuzz/corpus. Each input is tried as a timestamp, as an epoch
// number and as a credentials-URI answer; an accepted answer must hold only bytes
// 0x21-0x7E, expire in 1970...9999 after now, and render into `credentials`,
// and `config.json` as JSON that reads back to the same values.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let now = Date(timeIntervalSince1970: 1_716_287_969)
    let text = String(decoding: bytes, as: UTF8.self)

    if let date = Timestamp.parse(text) {
        let seconds = date.timeIntervalSince1970
        if !(seconds >= Timestamp.earliest && seconds < Timestamp.latest + 1) { fatalError("out of range: \(text)") }
        if Timestamp.parse(Timestamp.format(date)) != Timestamp.wholeSeconds(date) { fatalError("round trip: \(text)") }
    }
    if let number = Double(text) {
        _ = Timestamp.format(Date(timeIntervalSince1970: number))
        if let date = Timestamp.epoch(number), Timestamp.parse(Timestamp.format(date)) == nil {
            fatalError("epoch \(number)")
        }
    }
    guard let c = try? AnswerParser.parseFlat(status: 200, body: bytes, now: now) else { return 0 }
    for value in [c.accessKeyId, c.accessKeySecret, c.securityToken ?? "x"] {
        if value.isEmpty || !value.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) { fatalError("bad value accepted") }
    }
    guard let exp = c.expiration, exp > now, exp.timeIntervalSince1970 <= Timestamp.latest else {
        fatalError("bad expiration accepted")
    }
    let views = CredentialViews(c)
    guard let file = (try? JSONSerialization.jsonObject(with: Data(views.credentials))) as? [String: String],
        file["AccessKeyId"] == c.accessKeyId, file["AccessKeySecret"] == c.accessKeySecret,
        file["SecurityToken"] == c.securityToken, file["Expiration"] == Timestamp.format(exp)
    else { fatalError("credentials file does not read back") }
    guard (try? JSONSerialization.jsonObject(with: Data(views.configJSON))) != nil else {
        fatalError("config.json is not JSON")
    }
    // `credentials` with a Code is a credentials-URI answer: it must parse back to c.
    let answer = Array("{\"Code\":\"Success\",".utf8) + views.credentials.dropFirst()
    guard (try? AnswerParser.parseFlat(status: 200, body: answer, now: now)) == c else {
        fatalError("the credentials file does not parse back as an answer")
    }
    return 0
}
