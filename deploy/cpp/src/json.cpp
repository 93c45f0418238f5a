#include "json.h"

#include <cstdlib>
#include <stdexcept>

namespace pocketdet {

class JsonParser {
public:
    explicit JsonParser(const std::string& text) : s_(text) {}

    Json parse_document() {
        Json value = parse_value(0);
        skip_space();
        if (pos_ != s_.size()) fail("trailing characters");
        return value;
    }

private:
    static constexpr int kMaxDepth = 64;  // metadata nests 3 levels; refuse pathological input
    const std::string& s_;
    size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("invalid JSON: " + what + " at offset " + std::to_string(pos_));
    }
    void skip_space() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }
    char peek() {
        skip_space();
        if (pos_ >= s_.size()) fail("unexpected end");
        return s_[pos_];
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    bool consume_word(const char* word) {
        size_t n = std::char_traits<char>::length(word);
        if (s_.compare(pos_, n, word) != 0) return false;
        pos_ += n;
        return true;
    }

    Json parse_value(int depth) {
        if (depth > kMaxDepth) fail("nesting too deep");
        Json v;
        char c = peek();
        if (c == '{') {
            v.type_ = Json::Type::Object;
            ++pos_;
            if (peek() == '}') { ++pos_; return v; }
            while (true) {
                if (peek() != '"') fail("expected a string key");
                std::string key = parse_string();
                expect(':');
                v.object_[key] = parse_value(depth + 1);
                if (peek() == ',') { ++pos_; continue; }
                expect('}');
                return v;
            }
        }
        if (c == '[') {
            v.type_ = Json::Type::Array;
            ++pos_;
            if (peek() == ']') { ++pos_; return v; }
            while (true) {
                v.array_.push_back(parse_value(depth + 1));
                if (peek() == ',') { ++pos_; continue; }
                expect(']');
                return v;
            }
        }
        if (c == '"') {
            v.type_ = Json::Type::String;
            v.string_ = parse_string();
            return v;
        }
        if (consume_word("true")) { v.type_ = Json::Type::Bool; v.bool_ = true; return v; }
        if (consume_word("false")) { v.type_ = Json::Type::Bool; return v; }
        if (consume_word("null")) return v;
        if (c == '-' || (c >= '0' && c <= '9')) {
            const char* begin = s_.c_str() + pos_;
            char* end = nullptr;
            v.number_ = std::strtod(begin, &end);  // the metadata is written by Python's json (C locale)
            if (end == begin) fail("bad number");
            pos_ += static_cast<size_t>(end - begin);
            v.type_ = Json::Type::Number;
            return v;
        }
        fail(std::string("unexpected character '") + c + "'");
    }

    unsigned parse_hex4() {
        if (pos_ + 4 > s_.size()) fail("short \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
            char h = s_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
            else fail("bad \\u escape");
        }
        return code;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    std::string parse_string() {
        expect('"');
        std::string out;
        while (true) {
            if (pos_ >= s_.size()) fail("unterminated string");
            char c = s_[pos_++];
            if (c == '"') return out;
            if (c != '\\') { out += c; continue; }
            if (pos_ >= s_.size()) fail("unterminated escape");
            char e = s_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = parse_hex4();
                    // Python's json.dumps writes non-BMP characters as surrogate pairs
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
                        pos_ += 2;
                        unsigned low = parse_hex4();
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    }
                    append_utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
    }
};

Json Json::parse(const std::string& text) { return JsonParser(text).parse_document(); }

bool Json::has(const std::string& key) const { return type_ == Type::Object && object_.count(key) != 0; }

const Json& Json::at(const std::string& key) const {
    if (type_ != Type::Object) throw std::runtime_error("metadata: expected an object around key '" + key + "'");
    auto it = object_.find(key);
    if (it == object_.end()) throw std::runtime_error("metadata lacks key '" + key + "'");
    return it->second;
}

const Json& Json::at(size_t index) const {
    if (type_ != Type::Array || index >= array_.size()) throw std::runtime_error("metadata: array index out of range");
    return array_[index];
}

size_t Json::size() const {
    if (type_ == Type::Array) return array_.size();
    if (type_ == Type::Object) return object_.size();
    throw std::runtime_error("metadata: size() of a scalar");
}

double Json::number() const {
    if (type_ != Type::Number) throw std::runtime_error("metadata: expected a number");
    return number_;
}

bool Json::boolean() const {
    if (type_ != Type::Bool) throw std::runtime_error("metadata: expected true/false");
    return bool_;
}

const std::string& Json::str() const {
    if (type_ != Type::String) throw std::runtime_error("metadata: expected a string");
    return string_;
}

std::vector<std::string> Json::strings() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < size(); ++i) out.push_back(at(i).str());
    return out;
}

std::vector<double> Json::numbers() const {
    std::vector<double> out;
    for (size_t i = 0; i < size(); ++i) out.push_back(at(i).number());
    return out;
}

}  // namespace pocketdet
