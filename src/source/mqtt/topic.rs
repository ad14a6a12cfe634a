//! Topic patterns: a subscription's `topic` with its `{device}` (or `{device...}`) level, as
//! the filter the broker is asked for and the capture of a device id from a topic.

/// One segment of a topic pattern.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// `{device}`: matches one level and captures it as the device id.
    Device,
    /// `{device...}`: matches one or more levels (a Zigbee2MQTT friendly name may hold `/`)
    /// and captures them, `/` included, as the device id.
    DeviceLevels,
    /// `+`
    Any,
    /// `#` (last segment only)
    Rest,
}

/// A subscription topic with a `{device}` capture, e.g. `sensors/{device}/reading`, or
/// `{device...}` for a device id of several levels, e.g. `zigbee2mqtt/{device...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicPattern {
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// A subscription's topic: exactly one `{device}` or `{device...}` level.
    pub fn parse(pattern: &str) -> Result<TopicPattern, String> {
        let p = Self::parse_filter(pattern)?;
        match p.segments.iter().filter(|s| s.is_device()).count() {
            1 => Ok(p),
            0 => Err(format!(
                "`{pattern}` has no `{{device}}` level to take the device id from"
            )),
            _ => Err(format!("`{pattern}` has more than one `{{device}}` level")),
        }
    }

    /// A pattern that may have no device level (an `exclude` entry).
    pub fn parse_filter(pattern: &str) -> Result<TopicPattern, String> {
        if pattern.is_empty() {
            return Err("topic pattern is empty".into());
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "{device}" => Segment::Device,
                "{device...}" => Segment::DeviceLevels,
                "+" => Segment::Any,
                "#" if i == parts.len() - 1 => Segment::Rest,
                "#" => return Err(format!("`{pattern}`: `#` is only allowed as the last level")),
                p if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "`{pattern}`: level `{p}` mixes wildcards or braces with text; use `{{device}}`, `{{device...}}`, `+` or `#` as a whole level"
                    ))
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        if segments.contains(&Segment::DeviceLevels) && segments.contains(&Segment::Rest) {
            return Err(format!(
                "`{pattern}`: `{{device...}}` takes every level it can; it cannot be used with `#`"
            ));
        }
        if segments.iter().filter(|s| s.is_device()).count() > 1 {
            return Err(format!("`{pattern}` has more than one `{{device}}` level"));
        }
        Ok(TopicPattern { segments })
    }

    /// The MQTT subscription filter (`{device}` becomes `+`; `{device...}` and what follows
    /// it become `#`, and the pattern itself picks the topics that match).
    pub fn filter(&self) -> String {
        let mut levels = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            levels.push(match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Device | Segment::Any => "+",
                Segment::Rest | Segment::DeviceLevels => "#",
            });
            if *s == Segment::DeviceLevels {
                break;
            }
        }
        levels.join("/")
    }

    /// Whether `topic` matches, and the device id it captures (`Some("")` for a pattern
    /// without a device level).
    pub fn capture<'t>(&self, topic: &'t str) -> Option<&'t str> {
        if let Some(d) = self
            .segments
            .iter()
            .position(|s| *s == Segment::DeviceLevels)
        {
            return self.capture_levels(topic, d);
        }
        let mut device = Some("");
        let mut levels = topic.split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return device,
                _ => {
                    let level = levels.next()?;
                    match seg {
                        Segment::Literal(l) if l != level => return None,
                        Segment::Device => device = Some(level),
                        _ => {}
                    }
                }
            }
        }
        if levels.next().is_some() {
            return None;
        }
        device
    }

    /// `capture` for a pattern whose segment `d` is `{device...}`: the levels before it and
    /// after it match one each, and the device is every level between (at least one).
    fn capture_levels<'t>(&self, topic: &'t str, d: usize) -> Option<&'t str> {
        let (before, after) = (&self.segments[..d], &self.segments[d + 1..]);
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.len() < before.len() + after.len() + 1 {
            return None;
        }
        let tail = levels.len() - after.len();
        let fits = |seg: &Segment, level: &str| match seg {
            Segment::Literal(l) => l == level,
            _ => true,
        };
        let matched = before.iter().zip(&levels[..d]).all(|(s, l)| fits(s, l))
            && after.iter().zip(&levels[tail..]).all(|(s, l)| fits(s, l));
        if !matched {
            return None;
        }
        // The device's levels, as one slice of `topic`.
        let start: usize = levels[..d].iter().map(|l| l.len() + 1).sum();
        let len = levels[d..tail].iter().map(|l| l.len() + 1).sum::<usize>() - 1;
        Some(&topic[start..start + len])
    }
}

impl Segment {
    fn is_device(&self) -> bool {
        matches!(self, Segment::Device | Segment::DeviceLevels)
    }
}
